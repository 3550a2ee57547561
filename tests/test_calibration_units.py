"""Which unit refits which σ layer type is one table (register_unit), looked up along the layer's MRO."""

import pytest
import torch
from torch import nn

from njetify.calibration import units as U
from njetify.layers import NJetConv2d, TiedNJetConv2d


class MyNJet(NJetConv2d):
    """A user's subclass: refitted as its base class unless it registers a unit of its own."""


class MyUnit(U.Unit):
    pass


def _pair(layer_cls=NJetConv2d):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    return nn.Sequential(conv), nn.Sequential(layer_cls.from_conv(conv, order=2))


def test_a_subclass_takes_its_base_unit_until_it_registers_its_own(monkeypatch):
    original, converted = _pair(MyNJet)
    (unit,) = U.build_units(original, converted, ["0"])
    assert type(unit) is U.Unit and unit.paths == ["0"]
    monkeypatch.setitem(U._UNIT_TYPES, MyNJet, (MyUnit, nn.Conv2d))
    (unit,) = U.build_units(original, converted, ["0"])
    assert type(unit) is MyUnit


def test_register_unit_checks_its_argument_and_an_unknown_layer_names_the_fix():
    with pytest.raises(TypeError, match="Unit subclass"):
        U.register_unit(MyNJet, nn.Conv2d)
    original = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="not an NJetConv2d or a TiedNJetBranch.*register_unit"):
        U.build_units(original, nn.Sequential(nn.Identity()), ["0"])


def test_a_tied_head_is_one_unit_with_its_branches_in_order():
    torch.manual_seed(0)
    convs = [nn.Conv2d(4, 3, 3, padding=r, dilation=r) for r in (1, 2, 3)]
    tied = TiedNJetConv2d.from_convs(convs, order=2)
    original, converted = nn.ModuleList(convs), nn.ModuleList(tied.branches)
    (unit,) = U.build_units(original, converted, ["2", "0", "1"])
    assert type(unit) is U.TiedUnit and unit.paths == ["0", "1", "2"] and unit.originals == convs
    with pytest.raises(ValueError, match=r"branch\(es\) \[1\] are missing"):
        U.build_units(original, converted, ["0", "2"])
