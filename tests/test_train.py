"""fit(): parameter groups, schedules, settings, tasks, precision, history of the learned resolution."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from njetify.layers import NJetConv2d, SafeSubsample, SigmaModule
from njetify.recipes import FinetuneConfig
from njetify.train import (
    SegmentationMeter,
    build_optimizer,
    feature_sizes,
    fit,
    lr_factor,
    resolve_config,
    split_parameters,
)

FAST = dict(progress=False, seed=0)


class Tiny(nn.Module):
    def __init__(self, c=6, k=3, sigma=0.8):
        super().__init__()
        self.c1 = NJetConv2d(1, c, order=2, sigma=sigma)
        self.bn = nn.BatchNorm2d(c)
        self.sub1 = SafeSubsample(self.c1, stride=2)
        self.c2 = NJetConv2d(c, c, order=2, sigma=sigma)
        self.sub2 = SafeSubsample(self.c2, stride=2)
        self.head = nn.Linear(c, k)

    def forward(self, x):
        x = self.sub1(F.relu(self.bn(self.c1(x))))
        return self.head(F.relu(self.sub2(self.c2(x))).mean((2, 3)))


class TiedLike(SigmaModule):
    """A σ layer of a user's own (not an NJetConv2d): shared α, its own σ per branch."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.randn(2, 2, 6))
        self.log_sigma = nn.Parameter(torch.zeros(3))
        self.bias = nn.Parameter(torch.zeros(2))

    def scale_parameter(self):
        return self.log_sigma


def _data(n=96, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, size, size, generator=g) * 0.5 + y[:, None, None, None].float()
    return TensorDataset(x, y)


def test_parameter_groups():
    torch.manual_seed(0)
    m = nn.Sequential(Tiny(), TiedLike())
    g = split_parameters(m)
    t = m[0]
    ids = {k: {id(p) for p in v} for k, v in g.items()}
    assert ids["sigma"] == {id(t.c1.log_sigma), id(t.c2.log_sigma), id(m[1].log_sigma)}
    assert ids["alpha"] == {id(t.c1.alpha), id(t.c2.alpha), id(m[1].alpha)}
    assert ids["decay"] == {id(t.head.weight)}
    assert ids["no_decay"] == {id(p) for p in (t.c1.bias, t.c2.bias, t.bn.weight, t.bn.bias, t.head.bias, m[1].bias)}
    opt = build_optimizer(m, FinetuneConfig(lr=0.1, sigma_lr=0.03, weight_decay=1e-4))
    by = {grp["name"]: grp for grp in opt.param_groups}
    assert by["sigma"]["lr"] == 0.03 and by["sigma"]["weight_decay"] == 0
    assert by["alpha"]["lr"] == 0.1 and by["alpha"]["weight_decay"] == 1e-4
    assert by["no_decay"]["weight_decay"] == 0 and by["decay"]["weight_decay"] == 1e-4
    # frozen σ is left out; a shared parameter appears once
    t.c1.log_sigma.requires_grad_(False)
    shared = nn.ModuleList([t.head, t.head])
    assert id(t.c1.log_sigma) not in {id(p) for p in split_parameters(m)["sigma"]}
    assert len(split_parameters(shared)["decay"]) == 1


def test_schedules():
    cfg = FinetuneConfig(epochs=10, warmup_epochs=1, schedule="cosine")
    f = [lr_factor(s, 10, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.5) and f[99] < 0.001
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    step = FinetuneConfig(epochs=10, schedule="step", step_size=3, gamma=0.5)
    assert [lr_factor(s * 10, 10, step) for s in (0, 2, 3, 6, 9)] == [1, 1, 0.5, 0.25, 0.125]
    assert lr_factor(57, 10, FinetuneConfig(schedule="constant")) == 1.0


def test_config_overrides_and_errors():
    cfg = resolve_config(FinetuneConfig(lr=0.3), epochs=4, sigma_lr=None)
    assert (cfg.lr, cfg.epochs, cfg.sigma_lr) == (0.3, 4, 0.01)
    assert resolve_config({"optimizer": "adamw"}).optimizer == "adamw"
    with pytest.raises(TypeError, match="unknown fine-tuning setting.*learning_rate"):
        resolve_config(learning_rate=0.1)
    with pytest.raises(ValueError, match="optimizer must be one of 'sgd', 'adamw', got 'adam'"):
        resolve_config(optimizer="adam")
    with pytest.raises(ValueError, match="epochs must be a finite positive int, got 0"):
        resolve_config(epochs=0)
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_config(amp="fp8")
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        fit(Tiny(), _data(), amp="fp16", device="cpu", **FAST)
    with pytest.raises(ValueError, match="task must be one of"):
        fit(Tiny(), _data(), task="detection", **FAST)


def test_classification_learns_and_records_resolution():
    torch.manual_seed(0)
    m = Tiny()
    h = fit(m, _data(), _data(48, seed=1), epochs=4, batch_size=16, lr=0.1, sigma_lr=0.1, **FAST)
    assert [r["epoch"] for r in h.epochs] == [0, 1, 2, 3, 4]
    assert h.epochs[-1]["val"]["acc"] > 80 > h.epochs[0]["val"]["acc"]
    assert h.epochs[-1]["train"]["loss"] < h.epochs[1]["train"]["loss"]
    last = h.epochs[-1]
    assert set(last["lr"]) == {"alpha", "sigma", "decay", "no_decay"}
    for name in ("c1", "c2"):
        layer = getattr(m, name)
        assert last["layers"][name]["sigma"] == pytest.approx(float(layer.sigma.detach()))
        assert last["layers"][name]["size"] == layer.kernel_size[0]
    assert h.epochs[0]["layers"]["c1"]["sigma"] == pytest.approx(0.8)
    assert last["layers"]["c1"]["sigma"] != pytest.approx(0.8)  # σ is learned
    assert h.meta["feature_sizes_original"] == {"sub1": [6, 6], "sub2": [3, 3]}
    assert h.meta["subsample_sources"] == {"sub1": "c1", "sub2": "c2"}
    assert last["feature_sizes"] == feature_sizes(m, torch.zeros(1, 1, 12, 12))
    assert last["throughput"] > 0


def test_feature_sizes_learned_vs_original():
    m = Tiny(sigma=0.8)
    x = torch.zeros(1, 1, 29, 29)
    assert feature_sizes(m, x) == {"sub1": [15, 15], "sub2": [8, 8]}
    with torch.no_grad():
        m.c1.log_sigma.fill_(math.log(1.6))  # factor (1/2)^(1.6/0.8) = 1/4
    assert feature_sizes(m, x) == {"sub1": [8, 8], "sub2": [4, 4]}
    assert feature_sizes(m, x, original=True) == {"sub1": [15, 15], "sub2": [8, 8]}
    assert m.sub1.source is m.c1 and m.training  # restored


class TinySeg(nn.Module):
    def __init__(self, k=4):
        super().__init__()
        self.c1 = NJetConv2d(1, 8, order=2, sigma=0.7)
        self.sub = SafeSubsample(self.c1, stride=2)
        self.out = nn.Conv2d(8, k, 1)

    def forward(self, x):
        return {"out": self.out(F.relu(self.sub(self.c1(x))))}  # half resolution, torchvision style


def _seg_data(n=48, size=12):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n, 1, 1)).expand(n, size, size).clone()
    y[:, : size // 2] = 0  # top half background
    y[:, size // 2, :] = 255  # an ignored row
    x = (y.float() * (y != 255)).unsqueeze(1) + 0.3 * torch.randn(n, 1, size, size, generator=g)
    return TensorDataset(x, y)


def test_segmentation_miou_ignore_and_class_weights():
    torch.manual_seed(0)
    h = fit(TinySeg(), _seg_data(), _seg_data(24), task="segmentation", epochs=3, batch_size=8, lr=0.1,
            class_weights="inverse_frequency", **FAST)
    assert h.meta["num_classes"] == 4
    v = h.epochs[-1]["val"]
    assert v["miou"] > h.epochs[0]["val"]["miou"] and v["pixel_acc"] > 80


def test_segmentation_meter():
    m = SegmentationMeter(3, ignore_index=255)
    target = torch.tensor([[0, 1, 2, 255]])
    logits = F.one_hot(torch.tensor([[0, 1, 1, 0]]), 3).permute(0, 2, 1).float()  # (1, 3, 4)
    m.update(logits.unsqueeze(-1), target.unsqueeze(-1), 0.5)
    r = m.compute()
    # IoU: class 0 1/1, class 1 1/2, class 2 0/1 → mean 0.5; pixel acc 2/3 (ignored pixel left out)
    assert r["miou"] == pytest.approx(50.0) and r["pixel_acc"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="class 7"):
        m.update(logits.unsqueeze(-1), torch.tensor([[[7], [0], [0], [0]]]).view(1, 4, 1), 0.1)


def test_bf16_channels_last_clip_adamw_step_schedule():
    torch.manual_seed(0)
    m = Tiny()
    h = fit(m, _data(64), epochs=2, batch_size=16, amp="bf16", channels_last=True, grad_clip=0.5,
            optimizer="adamw", lr=3e-3, schedule="step", step_size=1, gamma=0.1, warmup_epochs=0, **FAST)
    assert m.c1.alpha.dtype == torch.float32  # autocast, not a cast of the model
    assert all(math.isfinite(r["train"]["loss"]) for r in h.epochs[1:])
    lrs = [r["lr"]["alpha"] for r in h.epochs]
    assert lrs == pytest.approx([3e-3, 3e-4, 3e-5])  # after 0, 1, 2 epochs


def test_deterministic_runs_are_identical():
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        m = Tiny()
        fit(m, _data(64), epochs=1, batch_size=16, deterministic=True, seed=7, progress=False)
        out.append(m.state_dict())
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])
    assert not torch.are_deterministic_algorithms_enabled()  # restored after fit


def test_progress_output(capsys):
    torch.manual_seed(0)
    fit(Tiny(), _data(32), _data(16), epochs=1, batch_size=16, progress=True, seed=0)
    err = capsys.readouterr().err
    assert "epoch 1/1  train loss" in err and re.search(r"val loss [\d.]+ acc [\d.]+", err) and "σ 0.8" in err
    assert "epoch 1/1 2/2  step 2" in err  # not a terminal: one line per step of this tiny epoch, with eta


class AsppLike(nn.Module):
    """DeepLab-v2-style head: tied N-Jet branches (shared α, σ each) summed."""

    def __init__(self):
        super().__init__()
        from njetify.layers.tied import TiedNJetConv2d

        self.stem = NJetConv2d(1, 4, order=2, sigma=0.6)
        tied = TiedNJetConv2d(4, 3, sigmas=[0.5, 1.0], order=2, dtype=torch.float32)
        self.b0, self.b1 = tied.branches

    def forward(self, x):
        x = F.relu(self.stem(x))
        return (self.b0(x) + self.b1(x)).mean((2, 3))


def test_tied_aspp_branches_are_sigma_layers():
    pytest.importorskip("njetify.layers.tied")
    torch.manual_seed(0)
    m = AsppLike()
    tied = m.b0.owner
    g = {k: {id(p) for p in v} for k, v in split_parameters(m).items()}
    assert g["sigma"] == {id(m.stem.log_sigma), id(tied.log_sigma)}
    assert id(tied.alpha) in g["alpha"] and id(tied.bias) not in g["alpha"]
    h = fit(m, _data(32), epochs=1, batch_size=16, lr=0.05, sigma_lr=0.5, **FAST)
    layers = h.epochs[-1]["layers"]
    assert set(layers) == {"stem", "b0", "b1"}
    assert layers["b1"]["sigma"] == pytest.approx(float(tied.sigma[1].detach()))
    assert layers["b1"]["size"] == tied.kernel_size(1)[0]
    assert layers["b0"]["sigma"] != layers["b1"]["sigma"]
    assert h.epochs[0]["layers"]["b1"]["sigma"] == pytest.approx(1.0)


class SegNet(nn.Module):
    """Converted-style segmentation net: N-Jet layers, a safe-subsampling, bilinear upsampling back."""

    def __init__(self):
        super().__init__()
        self.c1 = NJetConv2d(1, 8, order=2, sigma=0.8)
        self.sub = SafeSubsample(self.c1, stride=2)
        self.c2 = NJetConv2d(8, 8, order=2, sigma=0.8)
        self.out = nn.Conv2d(8, 11, 1)

    def forward(self, x):
        return self.out(F.relu(self.c2(F.relu(self.sub(self.c1(x))))))  # half size: fit() upsamples


@pytest.mark.skipif(not __import__("os").path.isdir("/work/shared/data/MNIST/raw"), reason="no MNIST")
def test_mnist_multiscale_seg_end_to_end():
    from njetify.data import get_dataset

    opts = dict(scales=1, seed=0)
    tr = get_dataset("mnist-multiscale-seg", "train", "/work/shared/data", length=24, **opts)
    va = get_dataset("mnist-multiscale-seg", "val", "/work/shared/data", length=8, **opts)
    torch.manual_seed(0)
    h = fit(SegNet(), tr, va, task="segmentation", epochs=1, batch_size=8, lr=0.05, **FAST)
    assert h.meta["num_classes"] == 11 and h.meta["feature_sizes_original"] == {"sub": [28, 28]}
    v = h.epochs[-1]["val"]
    assert 0 <= v["miou"] <= 100 and 0 <= v["pixel_acc"] <= 100
    assert v["loss"] < h.epochs[0]["val"]["loss"]  # 3 steps: the loss moves before the argmax does
