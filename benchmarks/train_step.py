"""Training-step throughput and memory: CIFAR ResNet-32 converted with ``paper-resnet32`` and ``default`` vs the original.

Recipes (``--recipes``): ``paper-resnet32`` (σ₀ = 1, the paper's from-scratch setting) and ``default``
(σ₀ from the kernels: 0.5 for a 3×3, so the converted network starts with 3×3 filters). Every
converted variant below is built once per recipe and labelled ``variant[recipe]``.

For every variant — original, converted with ``subsample="keep"``, converted with
``subsample="safe"`` — and every execution setting (fp32, channels_last, bf16 autocast,
both), one training step is forward + cross-entropy + backward + SGD step on a
``(batch, 3, 32, 32)`` batch. Printed: images/s, the slowdown ``original img/s ÷
converted img/s`` (the paper reports ~2× for its N-Jet NiN; the target here is ≤ 1.5×
with ``keep``; ``keep-baked`` separates the cost of the larger materialised kernels from the
N-Jet machinery, DESIGN §7; ``keep-fixed`` freezes σ: the recipe's σ₀ = 1 sits on a filter-size
boundary, so the first SGD step that grows σ turns every 5×5 filter into 7×7 — the "filters"
column shows the sizes after the run), and memory:

* CUDA: peak allocated memory during the step (``torch.cuda.max_memory_allocated``);
* CPU: bytes of the tensors autograd saves for backward (activation memory, each storage
  counted once) — the part of training memory the conversion changes.

Rounds are interleaved across variants so that load on a shared machine hits them alike;
the median round is reported.

    uv run python benchmarks/train_step.py                    # CPU, batch 128
    uv run python benchmarks/train_step.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import njetify

SETTINGS = {"fp32": (False, False), "channels_last": (True, False), "bf16": (False, True),
            "channels_last+bf16": (True, True)}


def build(variant: str, recipe: str = "paper-resnet32") -> nn.Module:
    """``original`` resnet32; converted with ``recipe`` and ``subsample`` = ``keep``/``safe``;
    or ``keep-baked``: the ``keep`` model with every N-Jet layer replaced by the plain ``nn.Conv2d`` of its
    materialised filter (same kernel size) — the cost of the convolutions alone, without the N-Jet machinery."""
    torch.manual_seed(0)
    model = njetify.create_model("resnet32", num_classes=10)
    if variant == "original":
        return model
    base = variant.removesuffix("-baked").removesuffix("-fixed")
    model = njetify.njetify(model, recipe=recipe, subsample=base)
    if variant.endswith("-fixed"):  # σ frozen at σ₀: filter sizes cannot grow during the steps
        for m in model.modules():
            if isinstance(m, njetify.NJetConv2d):
                m.log_sigma.requires_grad_(False)
    if variant.endswith("-baked"):
        for name, m in list(model.named_modules()):
            if isinstance(m, njetify.NJetConv2d):
                parent, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, leaf, m.to_conv())
    return model


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> int:
    """Bytes autograd saves for backward in one forward (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


class Case:
    def __init__(self, variant: str, setting: str, batch: int, device: torch.device, recipe: str = "paper-resnet32"):
        self.variant, self.setting = variant, setting
        self.label = variant if variant == "original" else f"{variant}[{recipe}]"
        cl, self.bf16 = SETTINGS[setting]
        self.model = build(variant, recipe).to(device).train()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
        self.y = torch.randint(0, 10, (batch,), generator=g).to(device)
        if cl:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.device = device
        self.times: list[float] = []
        self.memory = 0

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(self.x).float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def measure_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.step()
            torch.cuda.synchronize()
            self.memory = torch.cuda.max_memory_allocated()
        else:
            self.memory = saved_bytes(self.model, self.x, self.y, self.bf16)

    def timed(self, steps: int) -> None:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync()
        self.times.append((time.perf_counter() - t) / steps)

    @property
    def ips(self) -> float:
        return self.x.shape[0] / statistics.median(self.times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", default="original,keep,keep-fixed,keep-baked,safe",
                   help="comma-separated: original (first), keep, keep-fixed, keep-baked, safe")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {list(SETTINGS)}")
    p.add_argument("--recipes", default="paper-resnet32,default", help="comma-separated recipes to convert with")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = args.settings.split(",")
    variants = args.variants.split(",")
    if variants[0] != "original":
        raise SystemExit("--variants must start with 'original' (the baseline of the ratios)")
    recipes = args.recipes.split(",")
    cases = [Case(v, s, args.batch, device, r) for s in settings for v in variants
             for r in (recipes[:1] if v == "original" else recipes)]
    for c in cases:
        c.step()  # warm-up (allocations, σ host reads, autotuning)
        c.measure_memory()
    for _ in range(args.rounds):
        for c in cases:
            c.timed(args.steps)
    mem_kind = "peak MiB" if device.type == "cuda" else "saved-for-backward MiB"
    print(f"resnet32, batch {args.batch}, 32×32, device {device} ({torch.get_num_threads()} threads), "
          f"median of {args.rounds} rounds × {args.steps} steps")
    print(f"{'setting':<20}{'model':<28}{'img/s':>9}{'slowdown':>10}{mem_kind:>24}{'mem ratio':>11}  filters")
    for s in settings:
        row = [c for c in cases if c.setting == s]
        base = row[0]
        for c in row:
            print(f"{s:<20}{c.label:<28}{c.ips:>9.1f}{base.ips / c.ips:>9.2f}×{c.memory / 2**20:>24.1f}"
                  f"{c.memory / base.memory:>10.2f}×  {kernel_sizes(c.model)}")
    fp = {c.label: c for c in cases if c.setting == settings[0]}
    for r in recipes:
        keep, safe = fp.get(f"keep[{r}]"), fp.get(f"safe[{r}]")
        if keep is not None:
            print(f"\n{settings[0]}, {r}: converted/original slowdown keep {fp['original'].ips / keep.ips:.2f}× "
                  "(target ≤ 1.5×)" + (f", safe {fp['original'].ips / safe.ips:.2f}×" if safe else ""))
        fixed, baked = fp.get(f"keep-fixed[{r}]"), fp.get(f"keep-baked[{r}]")
        if fixed is not None and baked is not None:
            print(f"{r}: N-Jet machinery over plain convs with the same kernels (σ fixed): "
                  f"{baked.ips / fixed.ips:.2f}×")


def kernel_sizes(model: nn.Module) -> str:
    """Counts of the 3×3+ conv kernel sizes in ``model`` now, e.g. ``31×7``."""
    sizes: dict[int, int] = {}
    for m in model.modules():
        k = m.kernel_size[0] if isinstance(m, njetify.NJetConv2d) else (
            m.kernel_size[0] if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1 else None)
        if k is not None:
            sizes[k] = sizes.get(k, 0) + 1
    return ", ".join(f"{n}×{k}" for k, n in sorted(sizes.items()))


if __name__ == "__main__":
    main()
