"""Regenerate the command-line transcripts of README.md from real runs, and the figures they show.

    uv run python docs/make_transcripts.py                 # runs everything (923 s on 2 shared CPU cores)
    uv run python docs/make_transcripts.py --only convert  # one transcript
    uv run python docs/make_transcripts.py --check         # only check that README's markers are known

Every ```console block of README.md follows a marker ``<!-- transcript: NAME -->``;
this script runs the commands of NAME (below) in a scratch folder with ``COLUMNS=80``
and ``NO_COLOR=1``, ``NJETIFY_DATA`` pointing at MNIST (``--data-dir``, default
``../shared/data``), and writes what they printed (stdout and stderr, as a terminal
shows them) into the block. Long tables are shortened by ELIDE rules, which drop the
middle rows and say how many. The fine-tuning run's PNGs go to ``docs/img/cli/``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
IMG = ROOT / "docs" / "img" / "cli"
NJETIFY = str(Path(sys.executable).parent / "njetify")
MARK = re.compile(r"(<!-- transcript: (?P<name>[\w-]+) -->\n```console\n)(?P<body>.*?)(```)", re.S)

# name -> commands, run in order in one scratch folder shared by all transcripts.
# "!INT n CMD": run CMD and press Ctrl-C after its n-th progress line.
TRANSCRIPTS: dict[str, list[str]] = {
    "convert": ["njetify convert resnet32 --order 3"],
    "calibrate": ["njetify convert resnet20 --in-chans 1 --num-classes 10 --calibrate mnist --out r20.safetensors"],
    # the Quick start's commands, with its flags (tests/test_readme.py checks that they agree)
    "finetune": ["njetify finetune r20.safetensors --data mnist --limit-train 4096 --limit-val 1000 --epochs 2 "
                 "-b 64 --lr 0.05 --sigma-lr 0.05 --out r20-run",
                 "njetify plot r20-run"],
    "interrupt": [
        "!INT 3 njetify finetune r20.safetensors --data mnist --limit-train 1024 --limit-val 500 --epochs 1 "
        "-b 64 --out r20-cut",
        "njetify finetune r20.safetensors --data mnist --out r20-cut --resume",
        "njetify finetune r20.safetensors --data mnist --out r20-cut",
    ],
    "inspect": ["njetify inspect r20-run/model.safetensors --plot figs --layer layer1.0.conv1"],
    "bake": ["njetify bake r20-run/model.safetensors --out r20.pt2 --onnx r20.onnx"],
    "errors": [
        "njetify models resnet --builtin --plain",
        "njetify convert resnt32",
        "njetify convert resnet32 --input-size 3x32",
        "njetify finetune r20.safetensors --data folder:photos",
        "njetify inspect resnet32.pth",
        "njetify convert tv:fasterrcnn_resnet50_fpn",
    ],
}
# Table rows to elide: (transcript, regex of a row) -> keep the first HEAD and last TAIL matching rows.
ROW = r"^(conv1|layer\d|safe_subsa|avgpool)\S* "
ELIDE = {"convert": (ROW, 3, 2), "calibrate": (ROW, 2, 1), "inspect": (ROW, 12, 3)}
# Lines of the fine-tuning progress in a log (not a terminal) that add nothing to a transcript.
DROP = re.compile(r"^epoch \d+/\d+ \d+/\d+ ")
PHOTOS = 4  # a tiny grayscale folder for the error transcript


def run(cmd: str, cwd: Path, env: dict) -> str:
    """Run one command line; return '$ uv run CMD' and its output as a terminal would show it."""
    interrupt = None
    if cmd.startswith("!INT "):
        _, n, cmd = cmd.split(" ", 2)
        interrupt = int(n)
    args = shlex.split(cmd)
    args[0] = NJETIFY if args[0] == "njetify" else args[0]
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, seen = [], 0
    for line in proc.stdout:
        if DROP.match(line):
            seen += 1
            if interrupt is not None and seen == interrupt:
                proc.send_signal(signal.SIGINT)
                lines.append("^C\n")
            continue
        lines.append(line)
    rc = proc.wait()
    shown = f"$ uv run {cmd}\n" + "".join(lines)
    if rc not in (0, 2, 130):
        raise SystemExit(f"{cmd!r} failed with exit code {rc}:\n{shown}")
    if rc:
        shown += f"$ echo $?\n{rc}\n"
    return shown


def elide(name: str, text: str) -> str:
    """Keep the first and last rows of the first long run of table rows of transcript ``name``
    (lines matching its ELIDE pattern); say how many were left out. Trailing blanks are dropped."""
    lines = [line.rstrip() for line in text.splitlines()]
    if name in ELIDE:
        pattern, head, tail = ELIDE[name]
        start = next((i for i, line in enumerate(lines) if re.match(pattern, line)), None)
        if start is not None:
            end = start
            while end < len(lines) and re.match(pattern, lines[end]):
                end += 1
            if end - start > head + tail + 1:
                cut = end - start - head - tail
                lines = lines[: start + head] + [f"…               ({cut} more rows)"] + lines[end - tail:]
    return "\n".join(lines) + "\n"


def make_photos(folder: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for k in range(2):
            d = folder / "photos" / split / f"class{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(PHOTOS):
                Image.new("L", (40, 40), 60 * k + i).save(d / f"{i}.png")
    (folder / "resnet32.pth").write_bytes(b"PK\x03\x04 a zip file, as torch.save writes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("NJETIFY_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--only", nargs="*", help="regenerate only these transcripts (they may need earlier ones)")
    ap.add_argument("--check", action="store_true", help="only check that every README transcript is known")
    ap.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
    args = ap.parse_args()
    text = README.read_text()
    names = [m.group("name") for m in MARK.finditer(text)]
    unknown = sorted(set(names) - set(TRANSCRIPTS))
    if unknown or text.count("```console") != len(names):
        raise SystemExit(f"README.md: console blocks without a known transcript marker: {unknown or '(unmarked)'}")
    if args.check:
        print(f"{len(names)} transcripts, all known")
        return
    work = Path(args.keep or tempfile.mkdtemp(prefix="njetify-transcripts-"))
    work.mkdir(parents=True, exist_ok=True)
    make_photos(work)
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "NJETIFY_DATA": args.data_dir, "TERM": "dumb"}
    out: dict[str, str] = {}
    for name, cmds in TRANSCRIPTS.items():
        if args.only and name not in args.only:
            continue
        print(f"[{name}]", flush=True)
        out[name] = elide(name, "".join(run(c, work, env) for c in cmds))
        print(out[name], flush=True)
    text = MARK.sub(lambda m: m.group(1) + out.get(m.group("name"), m.group("body")) + m.group(4), text)
    README.write_text(text)
    IMG.mkdir(parents=True, exist_ok=True)
    for png in ("sigma.png", "sigma_layers.png", "sizes.png", "curves.png"):
        if (work / "r20-run" / png).is_file():
            shutil.copy(work / "r20-run" / png, IMG / png)
    if (work / "figs" / "filters_layer1_0_conv1.png").is_file():
        shutil.copy(work / "figs" / "filters_layer1_0_conv1.png", IMG / "filters_layer1_0_conv1.png")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"updated {README} and {IMG}")


if __name__ == "__main__":
    main()
