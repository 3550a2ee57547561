"""Declared pass dependencies hold: an order that would drop work is an error naming the pass, what it
needs and which pass provides it — never a silently smaller conversion."""

import pytest
import torch
from torch import nn

import njetify
from njetify.surgery import DEFAULT_PASSES, Pass, insert_pass
from njetify.surgery.context import PipelineError, check_pipeline
from njetify.surgery.passes.convs import conv_pass


class AsppNet(nn.Module):
    """A stem conv, then three dilated 3×3 branches (rates 1, 2, 3) summed: one ASPP head at ``head``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.ModuleList(nn.Conv2d(4, 6, 3, padding=r, dilation=r) for r in (1, 2, 3))

    def forward(self, x):
        x = self.stem(x)
        return sum(b(x) for b in self.head)


def _tied(report):
    return [r for r in report.select("aspp") if r.action == "tied"]


def _moved(passes, name, *, before):
    moving = next(p for p in passes if p.name == name)
    return insert_pass(passes, moving, before=before)


def test_default_order_ties_the_head():
    torch.manual_seed(0)
    _, report = njetify.convert(AsppNet(), max_fit_error=float("inf"))
    assert len(_tied(report)) == 1 and _tied(report)[0].path == "head"


def test_convs_before_aspp_is_an_error_naming_both_passes():
    passes = _moved(DEFAULT_PASSES, "convs", before="aspp")
    with pytest.raises(PipelineError, match=r"pass 'convs' requires 'tied'.*pass 'aspp' provides 'tied': "
                                            r"put it before 'convs'"):
        check_pipeline(passes)
    with pytest.raises(PipelineError, match="'convs'"):
        njetify.convert(AsppNet(), passes=passes)


def test_a_pipeline_without_aspp_names_the_default_provider():
    passes = tuple(p for p in DEFAULT_PASSES if p.name != "aspp")
    with pytest.raises(PipelineError, match=r"'convs' requires 'tied'.*pass 'aspp' of the default pipeline"):
        check_pipeline(passes)


def test_calibrate_declares_tied():
    calibrate = next(p for p in DEFAULT_PASSES if p.name == "calibrate")
    assert set(calibrate.requires) >= {"converted", "tied"}


def test_an_undeclared_converting_pass_before_aspp_fails_its_check():
    """A user's conv pass that declares nothing passes the static check; the ``aspp`` pass's own check of
    the state stops the conversion instead of tying no head, and the model is rolled back."""
    model = AsppNet()
    eager = Pass("eager_convs", conv_pass, requires=("analysis",))
    passes = insert_pass(DEFAULT_PASSES, eager, before="aspp")
    with pytest.raises(PipelineError, match=r"pass 'aspp' cannot do its work:.*converted 2 \(head\.1, head\.2\)"
                                            r".*run 'aspp'"):
        njetify.convert(model, passes=passes, inplace=True)
    assert all(type(m) is nn.Conv2d for m in model.head)  # rolled back


def test_an_undeclared_pass_that_converts_no_dilated_conv_is_fine():
    def convert_stem(ctx):
        from njetify.surgery.context import ConvertedLayer

        old = ctx.module("stem")
        new = njetify.NJetConv2d.from_conv(old)
        ctx.rewriter.replace("stem", new)
        ctx.converted["stem"] = ConvertedLayer("stem", new, old)

    torch.manual_seed(0)
    passes = insert_pass(DEFAULT_PASSES, Pass("stem", convert_stem, requires=("analysis",)), before="aspp")
    _, report = njetify.convert(AsppNet(), passes=passes, max_fit_error=float("inf"))
    assert len(_tied(report)) == 1


def test_the_docs_example_pass_runs():
    """docs/surgery.md, "The pipeline is a value": a pass inserted after ``convs`` that freezes the first σ."""

    def freeze_first_sigma(ctx):
        first = next(iter(ctx.converted.values()))
        first.layer.scale_parameter().requires_grad_(False)

    passes = insert_pass(DEFAULT_PASSES, Pass("freeze", freeze_first_sigma, requires=("converted",)), after="convs")
    assert [p.name for p in passes].index("freeze") == [p.name for p in passes].index("convs") + 1
    torch.manual_seed(0)
    net, _ = njetify.convert(AsppNet(), passes=passes, max_fit_error=float("inf"))
    assert not net.head[0].scale_parameter().requires_grad  # the first converted layer: a tied branch (aspp first)
    assert net.stem.log_sigma.requires_grad
