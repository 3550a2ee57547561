"""DistributedDataParallel: 2 gloo processes on CPU, launched like torchrun (env:// variables)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from njetify.layers import NJetConv2d, SafeSubsample
from njetify.train import fit, load_checkpoint

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable"),
    pytest.mark.slow,  # two fresh interpreters import torch + torch._dynamo (DDP): ~80 s on 2 busy cores
]

SETTINGS = dict(epochs=2, batch_size=16, lr=0.1, sigma_lr=0.2, seed=1, progress=False, max_steps=5)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = NJetConv2d(1, 4, order=2, sigma=0.8)
        self.sub = SafeSubsample(self.c1, stride=2)
        self.c2 = NJetConv2d(4, 4, order=2, sigma=0.6)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(F.relu(self.c2(F.relu(self.sub(self.c1(x))))).mean((2, 3)))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(torch.randn(n, 1, 10, 10, generator=g) + y[:, None, None, None], y)


def _model():
    torch.manual_seed(0)
    return Tiny()


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = _model()
    h = fit(model, _data(64, 0), _data(29, 1), out_dir=os.path.join(out, "run"), device="cpu", **SETTINGS)
    torch.save({"model": model.state_dict(), "history": h.to_dict(),
                "group_alive": torch.distributed.is_initialized()}, os.path.join(out, f"rank{rank}.pt"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_each_other_and_a_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert not r0["group_alive"], "fit() must destroy the process group it created"
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), f"{k} differs between ranks"
    assert r0["model"]["c1.log_sigma"] != _model().c1.log_sigma.detach()  # σ did move

    single = _model()
    h = fit(single, _data(64, 0), _data(29, 1), device="cpu", **SETTINGS)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(r0["model"][k], v, rtol=1e-4, atol=1e-5, msg=f"{k}: DDP != single process")
    # validation is sharded unevenly (15 + 14 samples) and summed across ranks
    for key in ("loss", "acc"):
        assert r0["history"]["epochs"][1]["val"][key] == pytest.approx(h.epochs[1]["val"][key], rel=1e-4)
    # only rank 0 wrote, and its checkpoint holds the synchronised weights
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["state"]["step"] == 5 and len(ck["meters"]) == 2
    assert torch.equal(ck["model"]["c2.log_sigma"], r0["model"]["c2.log_sigma"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "history.csv", "history.json", "last.pt"]
