"""path="auto" against forced paths on a converted timm resnet18 (keep mode), train step, CPU.

Ratios to the original network measured in the same run (interleaved rounds, best of 3):
``auto`` times its candidates on the first call of each layer signature, so after the warm-up
step it should match the faster forced path at every σ.

    uv run python benchmarks/auto_vs_forced.py 112      # input side in pixels (default 112)
"""
import time, torch, timm, njetify, sys
torch.set_num_threads(2)
torch.manual_seed(0)
res = int(sys.argv[1]) if len(sys.argv) > 1 else 112
def mk(conv, path="auto", sigma=None):
    m = timm.create_model("resnet18", num_classes=10)
    if conv:
        m, _ = njetify.convert(m, subsample="keep")
        for l in m.modules():
            if isinstance(l, njetify.NJetConv2d):
                l.path = path
                if sigma: 
                    with torch.no_grad(): l.log_sigma.fill_(torch.tensor(sigma).log())
    return m
x = torch.randn(8, 3, res, res); y = torch.randint(0, 10, (8,))
def step(m):
    m.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(m(x), y).backward()
models = {"orig": mk(False), "dense": mk(True, "dense"), "auto": mk(True), "dense.6": mk(True, "dense", 0.6),
          "factorised.6": mk(True, "factorised", 0.6), "auto.6": mk(True, "auto", 0.6)}
for m in models.values(): step(m)
t = {k: [] for k in models}
for r in range(3):
    for k, m in models.items():
        t0 = time.perf_counter(); step(m); t[k].append(time.perf_counter() - t0)
b = min(t["orig"])
for k in t: print(k, f"{min(t[k])*1e3:.0f} ms  {min(t[k])/b:.2f}x")
