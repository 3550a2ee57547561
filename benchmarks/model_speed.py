"""Speed of converted networks: train step, eval forward and baked eval, against the original and the plain twin.

For each network (``--models``; default timm ``resnet18`` and ``resnet50`` at 224² batch 8 and the
CIFAR ``resnet32`` at 32² batch 128), each subsample mode (``--modes``) and each σ (``--sigmas``:
``s0`` — σ₀ from the kernels, 3×3 filters —, or a σ in pixels set in every N-Jet layer), three
models are timed in interleaved rounds on the same batch (random weights, no calibration):

* ``original``: the network as the library builds it;
* ``njet``: the converted network (``path="auto"``, σ learned: a train step updates it);
* ``twin``: the *plain twin* — the converted network baked with every filter a plain ``nn.Conv2d``
  of the size σ asks for (and fixed subsamplings in safe mode), trained as ordinary weights: what
  the network would cost if N-Jet layers were free;
* ``baked`` (eval only): ``njetify.bake`` as a user gets it, after an eval forward on the batch (each
  layer baked as a plain conv or, where measured faster on that input, factorised:
  :mod:`njetify.layers.bake_form`).

A train step is forward + cross-entropy + backward + SGD step; eval is a forward under
``torch.no_grad`` in eval mode. ``--compile`` also times ``torch.compile``d copies (inductor; the
first calls, which compile, are not timed). Printed per row: the median step in ms of every
model and the ratios njet ÷ original, njet ÷ twin, baked ÷ original and baked ÷ twin (eval). Rounds interleave
the models so that load on a shared machine hits them alike.

    uv run python benchmarks/model_speed.py                              # every default row (long on CPU)
    uv run python benchmarks/model_speed.py --models resnet32 --rounds 3 --write docs/measured/model_speed_resnet32_cpu.txt
    uv run python benchmarks/model_speed.py --models timm:resnet18 --sigmas s0,0.6 --modes keep --compile
    uv run python benchmarks/model_speed.py --models timm:regnetx_002@128,tv:mobilenet_v3_small@224 --sigmas s0

Any other model as ``NAME@SIDE`` (a name ``njetify.create_model`` knows; batch 8, or ``--batch``).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import njetify
from njetify.bake import bake
from njetify.layers import sigma_layers
from njetify.layers.sizes import refresh_sizes

#: name → (input side, batch)
MODELS = {"timm:resnet18": (224, 8), "timm:resnet50": (224, 8), "resnet32": (32, 128)}


def _set_sigma(model, sigma: float) -> None:
    params = {id(p): p for p in (m.scale_parameter() for m in sigma_layers(model).values())}
    with torch.no_grad():
        for p in params.values():
            p.fill_(math.log(sigma))
    refresh_sizes(model)


def _sizes(model) -> str:
    sides = sorted({int(m.kernel_size[0]) for m in sigma_layers(model).values()})
    return "/".join(map(str, sides)) or "-"


def _train_step(model, opt, x, y):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _eval_step(model, x):
    def step():
        with torch.no_grad():
            model(x)

    return step


def _time(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _interleaved(steps: dict, rounds: int, warmup: int, device) -> dict[str, float]:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            times[k].append(_time(fn, device))
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _models(name, mode, sigma, side, batch, device):
    torch.manual_seed(0)
    original = njetify.create_model(name, num_classes=10).to(device)
    x = torch.randn(batch, 3, side, side, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        njet, _ = njetify.convert(original, subsample=mode, example_inputs=x[:1])
    if sigma != "s0":
        _set_sigma(njet, float(sigma))
    with torch.no_grad():
        njet.eval()(x)  # as a user's model before baking: its layers have run on this input (bake measures there)
    njet.train()
    baked = bake(njet)
    twin = bake(njet, factorised="never")
    for p in twin.parameters():
        p.requires_grad_(True)
    return original, njet, twin, baked, x


def _geometry(name: str) -> tuple[str, int, int]:
    """``(model name, input side, batch)`` for one of :data:`MODELS` or any ``NAME@SIDE`` (batch 8)."""
    if name in MODELS:
        return (name, *MODELS[name])
    model, _, side = name.partition("@")
    if not side.isdigit():
        raise SystemExit(f"--models: {name!r} is none of {', '.join(MODELS)}; give other models as NAME@SIDE "
                         "(e.g. timm:regnetx_002@128)")
    return model, int(side), 8


def row(name, mode, sigma, args, device) -> dict:
    model, side, batch = _geometry(name)
    batch = args.batch or batch
    original, njet, twin, baked, x = _models(model, mode, sigma, side, batch, device)
    y = torch.randint(0, 10, (batch,), device=device)
    out = {"model": name, "mode": mode, "sigma": sigma, "sizes": _sizes(njet), "batch": batch, "side": side}
    variants = {"original": original, "njet": njet, "twin": twin}
    compiled = {}
    if args.compile:
        compiled = {f"{k}+compile": torch.compile(copy.deepcopy(m)) for k, m in variants.items()}
    for kind in ("train", "eval"):
        steps = {}
        models = {**variants, **compiled, **({"baked": baked} if kind == "eval" else {})}
        for k, m in models.items():
            if kind == "train":
                m.train()
                steps[k] = _train_step(m, torch.optim.SGD(m.parameters(), lr=1e-6, momentum=0.9), x, y)
            else:
                m.eval()
                steps[k] = _eval_step(m, x)
        ms = _interleaved(steps, args.rounds, args.warmup, device)
        for k, v in ms.items():
            out[f"{kind}/{k}"] = v
        if kind == "train" and sigma != "s0":  # the train steps moved σ a little: back to the row's value
            _set_sigma(njet, float(sigma))
    return out


def _fmt(r: dict, compiled: bool) -> list[str]:
    cells = [r["model"], r["mode"], str(r["sigma"]), r["sizes"]]
    for kind in ("train", "eval"):
        o, n, t = r[f"{kind}/original"], r[f"{kind}/njet"], r[f"{kind}/twin"]
        cells += [f"{o:.1f}", f"{n:.1f}", f"{t:.1f}", f"{n / o:.2f}×", f"{n / t:.2f}×"]
        if kind == "eval":
            cells += [f"{r['eval/baked'] / o:.2f}×", f"{r['eval/baked'] / t:.2f}×"]
        if compiled:
            co, cn = r[f"{kind}/original+compile"], r[f"{kind}/njet+compile"]
            cells += [f"{cn / co:.2f}×", f"{cn / r[f'{kind}/twin+compile']:.2f}×"]
    return cells


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}, or any NAME@SIDE (batch 8)")
    p.add_argument("--modes", default="keep,safe")
    p.add_argument("--sigmas", default="s0,0.6,1,2", help="s0 (σ₀ from the kernels) or σ in pixels")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="override every model's batch")
    p.add_argument("--compile", action="store_true", help="also torch.compile (inductor) every model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--write", type=Path, default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    head = ["model", "mode", "σ", "filters"]
    for kind in ("train", "eval"):
        head += [f"{kind} orig ms", f"{kind} njet ms", f"{kind} twin ms", f"{kind} njet/orig", f"{kind} njet/twin"]
        if kind == "eval":
            head += ["baked/orig", "baked/twin"]
        if args.compile:
            head += [f"{kind} compiled njet/orig", f"{kind} compiled njet/twin"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    print(lines[0], flush=True)
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            for sigma in args.sigmas.split(","):
                lines.append("| " + " | ".join(_fmt(row(name, mode, sigma, args, device), args.compile)) + " |")
                print(lines[-1], flush=True)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    cmd = "uv run python benchmarks/model_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# {cmd.strip()}\n# {where}, torch {torch.__version__}; median of {args.rounds} interleaved rounds; "
            "twin = the converted model baked to plain convs of the sizes σ asks for; baked = njetify.bake\n" + "\n".join(lines) + "\n")
    print(text)
    if args.write:
        args.write.write_text(text)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
