"""Safe-subsampling in encoder–decoder networks: which sites follow σ, which keep their stride and why.

Every decoder of segmentation-models-pytorch that this environment has (resnet18 encoder, no
pretrained weights) and an HRNet-style fusion written as a user module (:class:`HRNetFusion`)
are converted with ``subsample="safe"``; the script counts, per model, the subsampling sites
made safe and kept and the upsamplings that follow their partner or keep their factor, with
the reasons of what is kept, then grows every σ by 30 % and checks that the output keeps the
original's shape and that forward and backward run (a gradient on the σ of every layer the forward runs).

    uv run python examples/decoders_safe.py                 # prints the table
    uv run python examples/decoders_safe.py --write-docs    # and rewrites its block in docs/resolution.md
"""

from __future__ import annotations

import argparse
import math
import re
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import njetify
from njetify.layers import sigma_layers, sigma_parameters
from njetify.layers.sizes import refresh_sizes

DOC = Path(__file__).resolve().parents[1] / "docs" / "resolution.md"
BEGIN, END = "<!-- BEGIN decoders -->", "<!-- END decoders -->"
#: smp architectures tried, with the input side each needs (PAN's pyramid pools a 1/32 map three times more).
SMP_ARCHS = {"FPN": 64, "DeepLabV3Plus": 64, "Unet": 64, "UnetPlusPlus": 64, "MAnet": 64, "Linknet": 64,
             "PAN": 128, "PSPNet": 64, "DeepLabV3": 64, "UPerNet": 64}


class HRNetFusion(nn.Module):
    """HRNet-style network: a stem, three parallel branches at 1/1, 1/2 and 1/4 of the stem's map,
    one fusion (each branch gets the others, strided-conv'd down or 1×1-conv'd and upsampled by a
    fixed factor 2 or 4, added), and a head on the three maps upsampled to 1/1 and concatenated.

    ``(N, 3, H, W)`` → ``(N, classes, H, W)`` for H, W divisible by 4.
    """

    def __init__(self, width: int = 8, classes: int = 2):
        super().__init__()
        w = [width, 2 * width, 4 * width]
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, padding=1), nn.BatchNorm2d(w[0]), nn.ReLU())
        self.to2 = nn.Sequential(nn.Conv2d(w[0], w[1], 3, stride=2, padding=1), nn.ReLU())
        self.to4 = nn.Sequential(nn.Conv2d(w[1], w[2], 3, stride=2, padding=1), nn.ReLU())
        self.branches = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU()) for c in w)
        # fuse[i][j]: branch j → resolution i (down: strided 3×3 convs; up: a 1×1 conv, then upsampling)
        self.fuse = nn.ModuleList()
        for i in range(3):
            row = nn.ModuleList()
            for j in range(3):
                if j > i:
                    row.append(nn.Conv2d(w[j], w[i], 1))
                elif j < i:
                    steps = [nn.Conv2d(w[j], w[i] if k == i - j - 1 else w[j], 3, stride=2, padding=1)
                             for k in range(i - j)]
                    row.append(nn.Sequential(*steps))
                else:
                    row.append(nn.Identity())
            self.fuse.append(row)
        self.head = nn.Conv2d(sum(w), classes, 1)

    def forward(self, x):
        x = self.stem(x)
        x2 = self.to2(x)
        x4 = self.to4(x2)
        xs = [b(t) for b, t in zip(self.branches, (x, x2, x4))]
        fused = []
        for i in range(3):
            y = xs[i]
            for j in range(3):
                if j > i:
                    y = y + F.interpolate(self.fuse[i][j](xs[j]), scale_factor=2.0 ** (j - i), mode="bilinear",
                                          align_corners=False)
                elif j < i:
                    y = y + self.fuse[i][j](xs[j])
            fused.append(F.relu(y))
        up = [fused[0]] + [F.interpolate(f, scale_factor=2.0 ** k, mode="bilinear", align_corners=False)
                           for k, f in enumerate(fused[1:], 1)]
        return self.head(torch.cat(up, 1))


def build(name: str) -> tuple[nn.Module, int]:
    """``(model in eval mode, input side)`` of a model of the table (``"HRNetFusion"`` or an smp architecture)."""
    torch.manual_seed(0)
    if name == "HRNetFusion":
        return HRNetFusion().eval(), 64
    import segmentation_models_pytorch as smp

    model = getattr(smp, name)(encoder_name="resnet18", encoder_weights=None, classes=2)
    return model.eval(), SMP_ARCHS[name]


def grow_sigma(model: nn.Module, factor: float = 1.3) -> None:
    """Multiply every σ of ``model`` by ``factor`` (log σ += log factor) and refresh the filter sizes."""
    with torch.no_grad():
        for p in sigma_parameters(model):
            p.add_(math.log(factor))
    refresh_sizes(model)


def survey(name: str) -> dict:
    """Convert ``name`` in safe mode; counts, reasons of what is kept, and the σ × 1.3 shape check."""
    model, side = build(name)
    x = torch.randn(2, 3, side, side)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # filter caps of ASPP heads at this small size
        net, report = njetify.convert(model, subsample="safe", example_inputs=x)
    seconds = time.perf_counter() - t0
    sub = report.select("subsample")
    up = report.select("upsample")
    kept = [r for r in sub + up if r.action == "kept"]
    reasons = sorted({_short(r.reason) for r in kept})
    with torch.no_grad():
        want = tuple(model(x).shape)
        at_sigma0 = tuple(net(x).shape)
    grow_sigma(net)
    net.train()
    ran: set[int] = set()  # σ layers the forward calls (smp's PSPNet builds layers its forward never uses)
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.add(id(mod))) for m in sigma_layers(net).values()]
    out = net(x)
    for h in hooks:
        h.remove()
    out.float().square().mean().backward()
    used = {id(m.scale_parameter()) for m in sigma_layers(net).values() if id(m) in ran}
    grads = all(p.grad is not None and torch.isfinite(p.grad).all() for p in sigma_parameters(net) if id(p) in used)
    unused = sum(id(m) not in ran for m in sigma_layers(net).values())
    return {"model": name, "side": side, "safe": sum(r.action == "subsampled" for r in sub),
            "kept": sum(r.action == "kept" for r in sub), "follows": sum(r.action == "follows" for r in up),
            "up_kept": sum(r.action == "kept" for r in up), "reasons": reasons,
            "shape_ok": at_sigma0 == want and tuple(out.shape) == want, "grads": grads, "unused": unused,
            "seconds": seconds}


def _short(reason: str | None) -> str:
    """A kept row's reason without node names that differ between sites."""
    text = re.sub(r"'[^']*'", "'…'", reason or "")
    return text[:160]


def table(rows: list[dict]) -> str:
    """The markdown table of :func:`survey` rows."""
    lines = ["| model (input) | strides made safe | kept | upsamplings following | kept | output shape at σ₀ "
             "and σ × 1.3, backward | why kept |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | — | — | — | — | — | conversion failed: {r['error']} |")
            continue
        ok = "ok" if r["shape_ok"] and r["grads"] else "FAILED"
        why = "; ".join(r["reasons"]) or "—"
        if r["unused"]:
            why += f" ({r['unused']} converted layers are never run by the model's forward)"
        lines.append(f"| {r['model']} ({r['side']}×{r['side']}) | {r['safe']} | {r['kept']} | {r['follows']} | "
                     f"{r['up_kept']} | {ok} | {why} |")
    return "\n".join(lines)


def available() -> list[str]:
    """The models of the table this environment can build (smp architectures it has, then HRNetFusion)."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return ["HRNetFusion"]
    return [a for a in SMP_ARCHS if hasattr(smp, a)] + ["HRNetFusion"]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the table block in {DOC.name}")
    p.add_argument("--models", nargs="*", default=None, help="subset of the models (default: all available)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.models or available():
        try:
            rows.append(survey(name))
        except Exception as e:  # noqa: BLE001 - a model that fails is a row of the table, not the end of the run
            rows.append({"model": name, "error": f"{type(e).__name__}: {str(e)[:120]}"})
        print(rows[-1], flush=True)
    text = table(rows)
    print(text)
    if args.write_docs:
        doc = DOC.read_text()
        cmd = "uv run python examples/decoders_safe.py --write-docs"
        block = f"{BEGIN}\n<!-- written by `{cmd}`; do not edit by hand -->\n\n{text}\n\n{END}"
        if BEGIN in doc:
            doc = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
        else:
            doc = doc.rstrip("\n") + "\n\n" + block + "\n"
        DOC.write_text(doc)
    return rows


if __name__ == "__main__":
    main()
