"""What the report says (issue 22): the fidelity-gate advice in the summary, fixed subsamplings counted as
kept, ``str(report)`` within 100 columns, the ASPP table (rates → σ₀, sizes, params, joint error), notes that
say how many paths they leave out, search_max_dim in user terms, a zero random-weight check explained."""

from __future__ import annotations

import dataclasses
import io
import re
import warnings

import pytest
import torch
from rich.console import Console
from torch import nn

import njetify
from njetify.recipes import load_recipe
from njetify.summary import compare_models
from njetify.surgery.report import TEXT_WIDTH


def _quiet_convert(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return njetify.convert(model, **kw)


def _rendered(renderable, width: int = 80) -> str:
    out = io.StringIO()
    Console(file=out, width=width, no_color=True, highlight=False).print(renderable)
    return out.getvalue()


def test_gate_keeping_most_layers_says_so_and_fixed_subsamplings_count_as_kept():
    torch.manual_seed(0)
    _, report = _quiet_convert(njetify.create_model("resnet20"), order=2)  # weight errors ~0.57 > 0.5
    assert report.converted == 0
    assert report.subsampling_counts() == {"made_safe": 0, "kept": 4, "fixed": 4}
    summary = report.summary()
    assert "0 subsampling site(s) made safe, 4 kept (4 fixed at 1/stride" in summary, summary
    assert "the fidelity gate kept 19 of 19 layers" in summary
    assert "calibration_data" in summary and "order=3" in summary
    cli = report.gate_advice(cli=True)
    assert "--calibrate DATASET" in cli and "--order (3)" in cli and "--max-fit-error" in cli

    _, report = _quiet_convert(njetify.create_model("resnet20"), order=3)
    assert report.gate_advice() is None and "fidelity gate" not in report.summary()
    assert report.subsampling_counts() == {"made_safe": 4, "kept": 0, "fixed": 0}


def test_gate_advice_after_calibration_suggests_only_a_higher_order():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    recipe = dataclasses.replace(load_recipe("default"), max_fit_error=0.0)  # every layer fails the gate
    _, report = _quiet_convert(net, recipe=recipe, calibration_data=[torch.randn(2, 3, 12, 12)])
    advice = report.gate_advice()
    assert advice is not None and "2 of 2" in advice
    assert "calibration_data" not in advice and "order=4" in advice


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("timm:mobilenetv3_small_050", 32)])
@pytest.mark.parametrize("mode", ["keep", "safe"])
def test_printed_report_lines_fit_100_columns(name, size, mode):
    torch.manual_seed(0)
    model = njetify.create_model(name, num_classes=10)
    _, report = _quiet_convert(model, subsample=mode, calibration_data=[torch.randn(2, 3, size, size)])
    lines = str(report).splitlines()
    assert len(lines) > len(report.rows)  # long rows wrapped, nothing dropped
    assert max(len(line) for line in lines) <= TEXT_WIDTH == 100, max(lines, key=len)
    text = " ".join(str(report).split())
    for row in report.rows:
        assert f"{row.path}: {row.op} -> {row.action}" in text


class _Head(nn.Module):
    """A conv, then three concatenated dilated branches (rates 1, 2, 3)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.ModuleList(nn.Conv2d(4, 6, 3, padding=r, dilation=r) for r in (1, 2, 3))

    def forward(self, x):
        x = self.stem(x)
        return torch.cat([m(x) for m in self.b], 1)


def test_aspp_table_shows_rates_sigma0_sizes_params_and_joint_error():
    torch.manual_seed(0)
    _, report = _quiet_convert(_Head(), order=3)
    (head,) = report.select("aspp", "tied")
    text = _rendered(report)
    table = text[text.index("ASPP heads"):]
    line = next(ln for ln in table.splitlines() if ln.startswith("b "))
    sigma0 = "/".join(format(s, ".3g") for s in head.extra["sigma0"])
    sizes = "/".join(str(s) for s in head.extra["sizes"])
    assert f"1/2/3→{sigma0}" in line and sizes in line and "concat" in line, line
    assert f"{head.fit_error:.2f}" in line and f"{head.params_before}→{head.params_after}" in line, line
    branch = next(ln for ln in text.splitlines() if ln.startswith("b.1 "))
    assert "222→shared" in branch, branch  # 4·6·9 weights + 6 biases: the head holds the shared α
    assert not re.search(r"→0(?![.\d])", text)  # no "params→0" left


def test_notes_say_how_many_paths_they_leave_out():
    torch.manual_seed(0)
    _, report = _quiet_convert(njetify.create_model("resnet20"), order=2)
    note = next(n for n in report.notes if "stay the original conv" in n)
    assert "and 14 more (each has its own row in the convolutions table)" in note, note
    assert "..." not in note and "…" not in note


def test_search_max_dim_is_a_recipe_key_said_in_user_terms():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    data = [torch.randn(2, 3, 12, 12)]
    narrow = dataclasses.replace(load_recipe("default"), search_max_dim=50)  # layer 2: 8·10 + 1 = 81 unknowns
    _, report = _quiet_convert(net, recipe=narrow, calibration_data=data)
    reasons = {r.path: r.reason or "" for r in report.select("conv")}
    assert "not searched" not in reasons["0"]  # 3·10 + 1 = 31 coefficients: searched
    assert "σ₀ kept: not searched: the layer has 81 coefficients to fit" in reasons["2"], reasons
    assert "search_max_dim 50" in reasons["2"] and "raise search_max_dim" in reasons["2"]
    assert "regression" not in reasons["2"] and "unknowns" not in reasons["2"]
    _, report = _quiet_convert(net, recipe=dataclasses.replace(narrow, search_max_dim=None), calibration_data=data)
    assert not any("not searched" in (r.reason or "") for r in report.rows)
    with pytest.raises(ValueError, match="search_max_dim"):
        load_recipe({"search_max_dim": 0})


class _ZeroInitBlocks(nn.Module):
    """Two residual blocks whose last BatchNorm has scale 0 (timm's zero_init_last)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
                                    for _ in range(2))
        for b in self.blocks:
            nn.init.zeros_(b[1].weight)
            nn.init.zeros_(b[1].bias)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return x


def test_a_zero_random_weight_difference_is_explained_and_measured_with_the_scales_at_one():
    from njetify.cli.convert_cmd import _why_zero

    torch.manual_seed(0)
    model = _ZeroInitBlocks().eval()
    converted, report = _quiet_convert(model)
    assert report.converted == 2
    x = torch.randn(2, 3, 16, 16)
    plain = compare_models(model, converted, x)
    assert plain.max_abs_diff == 0 and plain.zero_norms == 2 and plain.max_abs_diff_unzeroed is None
    stats = compare_models(model, converted, x, unzero=True)
    assert stats.max_abs_diff_unzeroed > 1e-3 and stats.max_abs_output_unzeroed > 0
    assert not any(bool(b[1].weight.any()) for b in model.blocks)  # the models themselves are untouched
    words = _why_zero(stats)
    assert "2 normalisation layer(s) have scale 0" in words and "timm" in words
    assert f"max |Δ| {stats.max_abs_diff_unzeroed:.3g}" in words
    assert _why_zero(plain) == ""
