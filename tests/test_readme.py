"""Every Python block of README.md runs, in order, in one namespace (like a notebook), in a fresh folder.

The blocks are written to need nothing that is not in the repository: random weights, no
download. MNIST comes from ``$NJETIFY_DATA`` (default ``../shared/data``); without it the test is skipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NJETIFY_DATA", ROOT.parent / "shared" / "data"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced ```python block of README.md."""
    text = (ROOT / "README.md").read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_readme_has_python_blocks():
    assert len(readme_blocks()) >= 6


@pytest.mark.skipif(not (DATA / "MNIST" / "raw").is_dir(), reason=f"MNIST not at {DATA}")
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NJETIFY_DATA", str(DATA))
    namespace: dict = {"__name__": "__readme__"}
    for line, code in readme_blocks():
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - say which block failed
            pytest.fail(f"README.md block at line {line} failed: {type(e).__name__}: {e}")


def _timings():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_timings", ROOT / "benchmarks" / "readme_timings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_setup_commands_are_the_main_job_then_the_tests_that_ci_runs():
    setup = _timings().setup_commands()
    assert setup == ["uv run njetify convert resnet32 --order 3", "uv run pytest"]
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert setup[1] in ci  # CI runs the README's test command as written


def test_transcripts_use_the_quick_start_flags():
    """Every Quick start command is shown, as written, in a transcript (inspect's adds --plot)."""
    text = (ROOT / "README.md").read_text()
    shown = [line[2:] for line in text.splitlines() if line.startswith("$ uv run njetify ")]
    for cmd in _timings().quick_commands():
        if cmd.startswith("uv run njetify inspect "):
            assert any(s.startswith(cmd + " ") for s in shown), cmd
        else:
            assert cmd in shown, cmd


def test_readme_timings_are_the_measured_ones():
    import json

    mod = _timings()
    if not mod.RESULTS.is_file():
        pytest.skip(f"{mod.RESULTS} not written yet: run benchmarks/readme_timings.py --fresh-clone --write")
    doc = json.loads(mod.RESULTS.read_text())
    spans = {m["name"]: m["body"] for m in mod.SPAN.finditer((ROOT / "README.md").read_text())}
    assert set(spans) == {"setup", "quick"}
    for name, body in spans.items():
        assert body == mod.describe(name, doc), name
    assert [c["command"] for c in doc["quick"]["commands"]] == mod.quick_commands()
    assert [c["command"] for c in doc["setup"]["commands"]] == mod.setup_commands()
    start = (ROOT / "README.md").read_text().split("## Quick start (Python)")[0]
    assert "a few minutes" not in start  # set-up and Quick start say what was measured
