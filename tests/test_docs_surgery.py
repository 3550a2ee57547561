"""docs/surgery.md, "Adding a pass": the example block runs as written and does what the page says."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "surgery.md"


def _example() -> str:
    text = DOC.read_text()
    section = text[text.index("## Adding a pass\n"):]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return block


def test_the_add_a_pass_example_runs(capsys):
    space: dict = {}
    exec(compile(_example(), str(DOC), "exec"), space)
    net, report, decision = space["net"], space["report"], space["FrozenSigma"]
    assert capsys.readouterr().out.strip() == "σ frozen at 0.5 px"  # the comment in the block
    assert not net[0].scale_parameter().requires_grad and net[2].scale_parameter().requires_grad
    assert report.row("conv", "0").action == "converted"
    assert [p.name for p in space["passes"]].index("freeze") == [p.name for p in space["passes"]].index("convs") + 1


def test_the_example_ensures_catches_a_pass_that_did_not_freeze():
    space: dict = {}
    exec(compile(_example().split("\nmodel = ")[0], str(DOC), "exec"), space)
    import dataclasses

    import torch

    import njetify
    from njetify.surgery import PipelineError

    lazy = dataclasses.replace(space["freeze"], run=lambda ctx: None)
    passes = space["insert_pass"](space["DEFAULT_PASSES"], lazy, after="convs")
    with pytest.raises(PipelineError, match=r"pass 'freeze' did not do its work: 0 still learns σ"):
        njetify.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1)), passes=passes)
