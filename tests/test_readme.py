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
