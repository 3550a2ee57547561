"""The surgery state: passes add typed decisions (never edit another pass's), the report is a view built
from them at the end, the saved record comes from the decisions, and every pass's ``ensures`` holds."""

import ast
import dataclasses
import json
import pathlib

import pytest
import torch
from torch import nn

import njetify
from njetify.surgery import DEFAULT_PASSES, Pass, insert_pass
from njetify.surgery.context import ConvertedLayer, PipelineError, SurgeryContext, check_pipeline
from njetify.surgery.decisions import Conversion, Refit, Reversion, Subsampling, TiedHead


class Net(nn.Module):
    """A strided stem, a 3×3 conv and three dilated branches summed (one ASPP head at ``head``)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.ModuleList(nn.Conv2d(4, 6, 3, padding=r, dilation=r) for r in (1, 2, 3))

    def forward(self, x):
        x = self.mid(self.stem(x))
        return sum(b(x) for b in self.head)


def _state(**kwargs):
    """Run the default pipeline with a last pass that keeps the state; returns (ctx, model, report)."""
    kept = {}
    passes = insert_pass(DEFAULT_PASSES, Pass("keep", lambda ctx: kept.setdefault("ctx", ctx)))
    torch.manual_seed(0)
    net, report = njetify.convert(Net(), passes=passes, example_inputs=torch.randn(1, 3, 24, 24), **kwargs)
    return kept["ctx"], net, report


def _pass(name):
    return next(p for p in DEFAULT_PASSES if p.name == name)


def test_passes_record_typed_frozen_decisions_the_report_is_their_view():
    ctx, _, report = _state(max_fit_error=float("inf"))
    assert isinstance(ctx, SurgeryContext)
    kinds = {type(d).__name__ for d in ctx.decisions}
    assert {"Conversion", "TiedHead", "Subsampling", "Refit"} <= kinds
    conv = ctx.decided(Conversion, "mid")[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        conv.decision = "kept"
    (head,) = ctx.tied
    assert isinstance(head, TiedHead) and head.branches == ("head.0", "head.1", "head.2")
    # one row per opening decision, in the order the passes made them
    opening = [d for d in ctx.decisions if d.row() is not None]
    assert [(r.kind, r.path) for r in report.rows] == [(d.row().kind, d.path) for d in opening]
    assert report.row("conv", "stem").extra["subsampled"]  # the subsample pass's decision, shown on the conv's row
    assert ctx.decided(Conversion, "stem")[0].row().extra.get("subsampled") is None  # ... not written into it
    assert report.row("conv", "mid").extra["fit"] == "weight-space"  # the calibrate pass's Refit


def test_the_gate_adds_a_reversion_that_supersedes_the_conversion():
    ctx, net, report = _state(max_fit_error=0.0)  # 0 reverts even an exact fit
    assert ctx.decided(Conversion, "stem")[0].decision == "converted"  # the conv pass's decision stands
    (rev,) = ctx.decided(Reversion, "stem")
    assert rev.measure == "weight-space" and rev.comparator == ">" and rev.limit == 0.0  # a fit error above 0
    row = report.row("conv", "stem")
    assert row.action == "kept" and row.reason == rev.reason and row.extra["gate"] == rev.gate
    assert "max_fit_error 0" in rev.gate and type(net.stem) is nn.Conv2d
    (sub,) = report.select("subsample")  # its subsampling, fixed at 1/stride (the view derives it)
    assert sub.extra["fixed"] and "σ source stem reverted" in sub.reason
    assert ctx.decided(Subsampling, "stem")[0].source == "stem"


def test_the_saved_record_is_built_from_the_decisions(tmp_path):
    ctx, net, report = _state(max_fit_error=0.0)
    reverted = {d.path for d in ctx.decided(Refit) if d.reverted}
    rules = report.record.recipe["rules"]
    assert {r["match"] for r in rules if r.get("max_fit_error") == 0.0} == reverted
    assert report.record.recipe["max_fit_error"] is None and report.record.input_shapes == [[1, 3, 24, 24]]
    report.recipe["rules"] = []  # the report is a view: editing it does not change what is saved
    path = njetify.save(net, tmp_path / "m.safetensors", report=report)
    meta = njetify.io.read_metadata(path)
    assert {r["match"] for r in meta["recipe"]["rules"] if r.get("max_fit_error") == 0.0} == reverted
    assert "record" not in report.to_dict() and json.dumps(report.to_dict())
    loaded = njetify.load(path, model=Net())
    assert type(loaded.stem) is nn.Conv2d


def test_a_pass_whose_ensures_fails_is_an_error_and_rolls_back():
    """A replacement conv pass that forgets convs fails the ``convs`` ensures: never a smaller conversion."""
    def first_only(ctx):
        m = ctx.module("mid")
        new = njetify.NJetConv2d.from_conv(m)
        ctx.rewriter.replace("mid", new)
        ctx.converted["mid"] = ConvertedLayer("mid", new, m)
        ctx.decide(Conversion("mid", op="3x3", decision="converted"))

    lazy = dataclasses.replace(_pass("convs"), run=first_only)
    passes = insert_pass(DEFAULT_PASSES, lazy, before="subsample")
    model = Net()
    with pytest.raises(PipelineError, match=r"pass 'convs' did not do its work: 1 convertible conv\(s\) were left "
                                            r"without a decision \(stem\)"):
        njetify.convert(model, passes=passes, inplace=True)
    assert type(model.mid) is nn.Conv2d and all(type(b) is nn.Conv2d for b in model.head)  # rolled back


def test_a_plan_pass_that_leaves_its_field_unset_fails_its_ensures():
    broken = dataclasses.replace(_pass("plan"), run=lambda ctx: None)
    with pytest.raises(PipelineError, match=r"pass 'plan' did not do its work: it left 'plan' unset"):
        njetify.convert(Net(), passes=insert_pass(DEFAULT_PASSES, broken, after="macs"))


def test_a_field_is_required_only_once_every_provider_ran():
    """``convs`` after ``subsample`` would leave every conv without its subsampling: refused before any work."""
    passes = insert_pass(DEFAULT_PASSES, _pass("convs"), after="calibrate")
    with pytest.raises(PipelineError, match=r"pass 'subsample' requires 'converted', which pass 'convs' after it "
                                            r"also provides: put 'convs' before 'subsample'"):
        check_pipeline(passes)


def test_a_layer_converted_after_calibrate_is_an_error_naming_the_passes():
    def late(ctx):  # an undeclared converting pass after 'calibrate'
        m = nn.Conv2d(4, 4, 3, padding=1)
        new = njetify.NJetConv2d.from_conv(m)
        ctx.rewriter.replace("mid", new)
        ctx.converted["late"] = ConvertedLayer("late", new, m)

    passes = insert_pass(DEFAULT_PASSES, Pass("late", late), after="calibrate")
    with pytest.raises(PipelineError, match=r"pass 'finish' cannot do its work: 1 converted layer\(s\) were never "
                                            r"calibrated.*\(late\).*'calibrate' provides 'calibrated'"):
        njetify.convert(Net(), passes=passes, max_fit_error=float("inf"))


def test_the_report_is_not_there_while_the_passes_run():
    def reads_report(ctx):
        ctx.report.note("x")

    with pytest.raises(AttributeError, match="built once, at the end.*ctx.decide.*ctx.note"):
        njetify.convert(Net(), passes=insert_pass(DEFAULT_PASSES, Pass("r", reads_report), before="finish"))


def test_calibrate_declares_what_it_reads():
    assert set(_pass("calibrate").requires) == {"converted", "tied", "subsampled"}
    assert "calibrated" in _pass("finish").requires


def test_the_scope_tracer_asks_the_converter_table():
    """Upsampling rewrites trace scopes with the same leaves as the analysis: registered types included."""
    from njetify.layers.convertible import Converter, register_converter
    from njetify.surgery.analysis.upsampling import _ScopeTracer

    class Registered(nn.Module):
        def forward(self, x):
            return x

    register_converter(Converter(Registered, check=lambda m: "not converted here"))
    tracer = _ScopeTracer({"a", "b"})
    assert tracer.is_leaf_module(Registered(), "a")  # never traced through, even when inlined
    assert not tracer.is_leaf_module(nn.Sequential(), "b")


def _private_imports():
    """``(file, line, module, name)`` of private names imported from a top-level module or another package."""
    root = pathlib.Path(njetify.__file__).parent
    found = []
    for f in sorted(root.rglob("*.py")):
        pkg = f.parent.relative_to(root.parent).parts
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = list(pkg[: len(pkg) - node.level + 1]) if node.level else []
            mod = base + (node.module.split(".") if node.module else [])
            if not mod or mod[0] != "njetify":
                continue
            owner = tuple(mod[:-1]) if (root.parent / pathlib.Path(*mod)).with_suffix(".py").exists() else tuple(mod)
            for a in node.names:
                private = a.name.startswith("_") and not a.name.startswith("__")
                if private and (owner != pkg or owner == ("njetify",)):
                    found.append((str(f.relative_to(root)), node.lineno, ".".join(mod), a.name))
            for i, part in enumerate(mod):
                if part.startswith("_") and not part.startswith("__") and pkg[:i] != tuple(mod[:i]):
                    found.append((str(f.relative_to(root)), node.lineno, ".".join(mod), "(private module)"))
    return found


def test_no_private_cross_package_imports():
    assert _private_imports() == []
