"""Shared plumbing for the paper-reproduction experiments in ``examples/``.

Every experiment script uses :func:`parse_args` (``--quick``, ``--out``, ``--data-dir``,
``--threads``), :func:`Run` (command, seeds, date and wall time of the run),
:func:`train` (a thin wrapper around :func:`njetify.train.fit`) and
:func:`write_section`, which replaces the script's own block in ``docs/results.md``
between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers, so that each
script rewrites only its own section and the others stay as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS_MD = DOCS / "results.md"
DEFAULT_DATA = os.environ.get("NJETIFY_DATA", str(ROOT.parent / "shared" / "data"))


def parse_args(description: str, argv=None, extra=None) -> argparse.Namespace:
    """Common options; ``extra(parser)`` may add more. ``--quick`` without ``--out`` writes to a temp dir.

    Full mode (default) writes ``docs/results.md``, ``docs/img`` and ``docs/results`` unless ``--out`` is given.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke run in seconds (tiny data, 1 epoch); never writes docs/")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (results.md, img/, results/); default docs/ (full) or a temp dir (--quick)")
    p.add_argument("--data-dir", default=DEFAULT_DATA, help="folder holding MNIST/raw (torchvision layout)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: several experiments can run at once)")
    p.add_argument("--device", default="cpu", help="where to train and evaluate: cpu (default, the recorded runs) or cuda")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be a positive int, got {args.threads}")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="njetify-example-")) if args.quick else DOCS
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    return args


#: Where :func:`train` and :func:`evaluate` run (``--device``).
DEVICE = "cpu"


class Run:
    """Records what produced a result: command, seeds, date (UTC), wall time, versions."""

    def __init__(self, script: str, seeds, quick: bool):
        self.script, self.seeds, self.quick = script, list(seeds), quick
        self.t0 = time.perf_counter()
        self.started = _dt.datetime.now(_dt.timezone.utc)

    @property
    def command(self) -> str:
        args = " ".join(shlex.quote(a) for a in sys.argv[1:])
        return f"uv run python examples/{self.script} {args}".strip()

    def meta(self) -> dict:
        """JSON-ready description of the run (call at the end: it includes the wall time)."""
        return {
            "command": self.command,
            "seeds": self.seeds,
            "quick": self.quick,
            "date_utc": self.started.strftime("%Y-%m-%d %H:%M UTC"),
            "wall_time_s": round(time.perf_counter() - self.t0, 1),
            "git_commit": _git_commit(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"
                       + (f", {torch.cuda.get_device_name()}" if DEVICE.startswith("cuda") else ""),
        }

    def footer(self) -> str:
        """Markdown lines giving the provenance of a section."""
        m = self.meta()
        mode = "**QUICK smoke run — not the full experiment**" if self.quick else "full run"
        return (
            f"*Produced by* `{m['command']}` ({mode}); seeds {', '.join(map(str, self.seeds))}; "
            f"{m['date_utc']}; wall time {m['wall_time_s'] / 60:.1f} min on {m['machine']} "
            f"({m['threads']} torch thread(s)); commit `{m['git_commit']}`; torch {m['torch']}."
        )


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def materialize(ds: Dataset, n: int | None, seed: int = 0) -> TensorDataset:
    """The first ``n`` samples of a seeded permutation of ``ds`` (all when None), stacked in memory."""
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    if n is not None:
        idx = idx[: min(n, len(ds))]
    xs, ys = zip(*(ds[int(i)] for i in idx))
    return TensorDataset(torch.stack(xs), torch.as_tensor(torch.stack([torch.as_tensor(y) for y in ys])))


def train(model, train_ds, val_ds, *, task: str, epochs: int, lr: float, sigma_lr: float, batch_size: int,
          seed: int, optimizer: str = "adamw", weight_decay: float = 1e-4, schedule: str = "cosine",
          evaluate_first: bool = False, **kw):
    """Train ``model`` in place with :func:`njetify.train.fit`; returns its :class:`~njetify.train.History`.

    σ (log-scale) gets ``sigma_lr`` and no weight decay (the trainer's N-Jet parameter groups).
    """
    from njetify.train import fit

    return fit(model, train_ds, val_ds, task=task, progress=False, device=DEVICE, evaluate_first=evaluate_first,
               optimizer=optimizer, lr=lr, sigma_lr=sigma_lr, weight_decay=weight_decay, epochs=epochs,
               batch_size=batch_size, schedule=schedule, seed=seed, **kw)


@torch.no_grad()
def evaluate(model, ds: TensorDataset, task: str, batch_size: int = 256, ignore_index: int = 255) -> float:
    """Test accuracy (%) for classification, mIoU (%) for segmentation, in eval mode."""
    from njetify.train import ClassificationMeter, SegmentationMeter

    model.eval().to(DEVICE)
    meter = None
    for i in range(0, len(ds), batch_size):
        x, y = ds[i : i + batch_size]
        out = model(x.to(DEVICE))
        out = (out["out"] if isinstance(out, dict) else out).cpu()
        if meter is None:
            meter = ClassificationMeter() if task == "classification" else SegmentationMeter(out.shape[1], ignore_index)
        meter.update(out, y, 0.0)
    return meter.compute()["acc" if task == "classification" else "miou"]


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = [float(x) for x in values]
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def pm(values, digits: int = 2) -> str:
    """``"mean ± std"`` of ``values``."""
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def save_json(out: Path, name: str, data: dict) -> Path:
    """Write ``out/results/<name>.json``."""
    path = Path(out) / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
    return path


def img_path(out: Path, name: str) -> Path:
    """``out/img/<name>`` (folder created)."""
    path = Path(out) / "img" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def figure(figsize: tuple[float, float]):
    """A ``matplotlib.figure.Figure`` with its own Agg canvas, as in ``njetify/plots.py`` (no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


HEADER = """# Results: resolution learning on MNIST

Reproductions of the central findings of Pintea et al., "Resolution learning in deep
convolutional networks using scale-space theory", IEEE TIP 2021, with njetify, on data
that ships (MNIST). Each section is written by the script named in it (`examples/`);
rerun a script to regenerate its section and figures. All runs are on CPU and sized for
a 2-core machine (each script's full mode finishes in under 30 minutes there), so training
sets are subsampled and schedules are short: the numbers show trends, not the paper's
absolute accuracies, and each section says where its result differs from the paper. Each
footer gives the command, seeds, date, wall time and thread count of its run.
"""


def write_section(out: Path, name: str, text: str) -> Path:
    """Replace (or append) the block ``name`` of ``out/results.md``; file-locked against concurrent scripts."""
    path = Path(out) / "results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    lock = Path(tempfile.gettempdir()) / "njetify-results-md.lock"
    with open(lock, "a") as lf, contextlib.ExitStack() as stack:
        fcntl.flock(lf, fcntl.LOCK_EX)
        stack.callback(fcntl.flock, lf, fcntl.LOCK_UN)
        old = path.read_text() if path.exists() else HEADER
        if begin in old and end in old:
            pre, rest = old.split(begin, 1)
            post = rest.split(end, 1)[1]
            new = pre + block + post
        else:
            new = _insert_sorted(old, name, block)
        path.write_text(new)
    return path


def _insert_sorted(doc: str, name: str, block: str) -> str:
    """Insert ``block`` before the first existing block whose name sorts after ``name`` (exp1 < exp2 < …)."""
    pos = len(doc)
    start = 0
    while True:
        i = doc.find("<!-- BEGIN ", start)
        if i < 0:
            break
        other = doc[i + len("<!-- BEGIN "): doc.find(" -->", i)]
        if other > name:
            pos = i
            break
        start = i + 1
    head, tail = doc[:pos].rstrip("\n"), doc[pos:]
    return head + "\n\n" + block + "\n\n" + tail.lstrip("\n") if tail else head + "\n\n" + block + "\n"
