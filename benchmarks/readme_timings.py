"""Time the README's set-up commands and its Quick start, as written, and put the figures into README.md.

    uv run python benchmarks/readme_timings.py                 # Quick start only, in a scratch folder
    uv run python benchmarks/readme_timings.py --fresh-clone   # the set-up commands in a fresh `git clone`
                                                               # (a new .venv), then the Quick start there
    uv run python benchmarks/readme_timings.py --write         # and update README.md's timing notes

The commands are read from README.md (of the clone: commit first): the ```bash block of "## Install" (set-up) and of
"## Quick start (command line)" (its ``export NJETIFY_DATA=…`` line is replaced by
``--data-dir``, default ``../shared/data``). Each runs once, its wall time measured
(``time.perf_counter`` around the process) with its exit code; a failure is printed
and recorded (the README's words then say so).
The results, with the machine (CPU cores, load average before and after) and the git
revision, go to ``docs/measured/readme_timings.json``; ``--write`` rewrites the text
between ``<!-- timings: setup -->`` / ``<!-- timings: quick -->`` and ``<!-- /timings -->``
in README.md from them (tests/test_readme.py checks that README.md and the file agree).
The set-up timing of a fresh clone builds .venv from uv's cache when it is warm
(no download); a cold cache adds the download of about 5.6 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "measured" / "readme_timings.json"
SPAN = re.compile(r"<!-- timings: (?P<name>\w+) -->(?P<body>.*?)<!-- /timings -->", re.S)


def bash_block(text: str, heading: str) -> list[str]:
    """The command lines (comments stripped) of the first ```bash block after ``heading``."""
    rest = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", rest, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def setup_commands(text: str | None = None) -> list[str]:
    return bash_block(text or README.read_text(), "## Install")


def quick_commands(text: str | None = None) -> list[str]:
    return [c for c in bash_block(text or README.read_text(), "## Quick start (command line)")
            if not c.startswith("export ")]


def _took(c: dict) -> str:
    return _seconds(c["seconds"]) + ("" if c.get("exit", 0) == 0 else f" (failed, exit {c['exit']})")


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 100 else f"{int(s // 60)} min {round(s % 60):02d} s"


def describe(name: str, doc: dict) -> str:
    """The README's words for timing group ``name`` of results ``doc`` (one line, no trailing space)."""
    g = doc[name]
    cores, load = g["machine"]["cores"], g["machine"]["load_before"]
    where = f"{cores} CPU cores, load average {load:.1f} at the start, `benchmarks/readme_timings.py`"
    if name == "setup":
        first, tests = g["commands"][0], g["commands"][1]
        venv = " including creating .venv from uv's cache" if g.get("fresh_clone") else ""
        return f"measured: `{first['command']}` {_took(first)}{venv}, `{tests['command']}` {_took(tests)}; {where}"
    per = ", ".join(f"{c['command'].split()[2]} {_took(c)}" for c in g["commands"])
    return f"measured: {_seconds(sum(c['seconds'] for c in g['commands']))} in all — {per}; {where}"


def run_all(commands: list[str], cwd: Path, env: dict) -> list[dict]:
    out = []
    for cmd in commands:
        print(f"$ {cmd}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(shlex.split(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        seconds = time.perf_counter() - t0
        tail = proc.stdout.strip().splitlines()[-3:]
        print("\n".join(tail) + f"\n  [{seconds:.1f} s, exit {proc.returncode}]", flush=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], flush=True)
        out.append({"command": cmd, "seconds": round(seconds, 1), "exit": proc.returncode})
    return out


def _machine(rev: str) -> dict:
    return {"cores": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2), "revision": rev,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_readme(doc: dict) -> None:
    text = README.read_text()
    text = SPAN.sub(lambda m: f"<!-- timings: {m['name']} -->{describe(m['name'], doc)}<!-- /timings -->"
                    if m["name"] in doc else m.group(0), text)
    README.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("NJETIFY_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--fresh-clone", action="store_true", help="time the set-up commands in a fresh git clone")
    ap.add_argument("--no-quick", action="store_true", help="skip the Quick start")
    ap.add_argument("--write", action="store_true", help="update README.md's timing notes from the results")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update({"NJETIFY_DATA": str(Path(args.data_dir).resolve()), "COLUMNS": "80", "NO_COLOR": "1"})
    doc = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="njetify-readme-"))
    try:
        project = ROOT
        if args.fresh_clone:
            project = scratch / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
            machine = _machine(rev)
            doc["setup"] = {"commands": run_all(setup_commands((project / "README.md").read_text()), project, env),
                            "fresh_clone": True, "machine": machine}
            machine["load_after"] = round(os.getloadavg()[0], 2)
        if not args.no_quick:
            (scratch / "quick").mkdir()
            machine = _machine(rev)
            doc["quick"] = {"commands": run_all(quick_commands((project / "README.md").read_text()), scratch / "quick",
                                                {**env, "UV_PROJECT": str(project)}), "machine": machine}
            machine["load_after"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    for name in ("setup", "quick"):
        if name in doc:
            print(f"{name}: {describe(name, doc)}")
    if args.write:
        write_readme(doc)
        print(f"updated {README}")


if __name__ == "__main__":
    sys.exit(main())
