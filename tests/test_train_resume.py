"""Checkpoints and exact resume: an interrupted + resumed run equals an uninterrupted one."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from njetify.layers import NJetConv2d, SafeSubsample
from njetify.train import NonFiniteLossError, fit, load_checkpoint


class Tiny(nn.Module):
    """Two N-Jet layers, BN, dropout (draws from the RNG), two safe-subsamplings."""

    def __init__(self, c=4, k=3):
        super().__init__()
        self.c1 = NJetConv2d(1, c, order=2, sigma=0.8)
        self.bn = nn.BatchNorm2d(c)
        self.sub1 = SafeSubsample(self.c1, stride=2)
        self.c2 = NJetConv2d(c, c, order=2, sigma=0.8)
        self.sub2 = SafeSubsample(self.c2, stride=2)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(c, k)

    def forward(self, x):
        x = self.sub1(F.relu(self.bn(self.c1(x))))
        x = self.sub2(F.relu(self.c2(x)))
        return self.head(self.drop(x.mean((2, 3))))


class NoisyData(Dataset):
    """Random 12×12 images whose class sets the mean; fresh noise per access (global RNG)."""

    def __init__(self, n=96, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.randn(n, 1, 12, 12, generator=g) + self.y[:, None, None, None].float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(1, 12, 12), int(self.y[i])


CFG = dict(epochs=2, batch_size=16, lr=0.05, sigma_lr=0.05, seed=3, progress=False, warmup_epochs=0.5)


def _model(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def _same(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_checkpoint_contents_and_files(tmp_path):
    data = NoisyData()
    fit(_model(), data, NoisyData(32, seed=1), out_dir=tmp_path, **CFG)
    for name in ("last.pt", "best.pt", "history.json", "history.csv"):
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"
    ck = load_checkpoint(tmp_path / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "state", "history", "meters", "config"):
        assert key in ck, key
    assert ck["state"]["epoch"] == 2 and ck["state"]["batch"] == 0 and ck["state"]["step"] == 12
    assert len(ck["history"]["epochs"]) == 3  # epoch 0 (before fine-tuning), 1, 2
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist == json.loads(json.dumps(ck["history"]))


def test_resume_after_max_steps_equals_uninterrupted(tmp_path):
    ref = _model()
    h_ref = fit(ref, NoisyData(), NoisyData(32, seed=1), out_dir=tmp_path / "a", **CFG)

    part = _model()
    h1 = fit(part, NoisyData(), NoisyData(32, seed=1), out_dir=tmp_path / "b", max_steps=4, **CFG)
    assert h1.meta["stopped"] == "max_steps"
    stop = h1.last()  # the stop is recorded: step, fractional epoch, training metrics, validation, σ
    assert stop["partial"] and stop["step"] == 4 and stop["epoch"] == pytest.approx(4 / 6)
    assert {"train", "val", "layers"} <= set(stop) and stop["layers"] != h1.epochs[0]["layers"]
    assert [p["step"] for p in h1.steps] == [1, 2, 3, 4]
    on_disk = json.loads((tmp_path / "b" / "history.json").read_text())
    assert on_disk["epochs"][-1]["partial"] and on_disk["epochs"][-1]["step"] == 4
    resumed = _model(seed=99)  # a different init: everything must come from the checkpoint
    h2 = fit(resumed, NoisyData(), NoisyData(32, seed=1), out_dir=tmp_path / "b", resume=True, **CFG)
    _same(ref, resumed)
    assert [r["epoch"] for r in h2.epochs] == [0, 1, 2]  # the partial row is superseded by the full run
    assert [r["train"]["loss"] for r in h2.epochs[1:]] == [r["train"]["loss"] for r in h_ref.epochs[1:]]
    assert h2.epochs[-1]["layers"] == h_ref.epochs[-1]["layers"]
    assert h2.steps == h_ref.steps  # σ and loss per step, identical


def test_resume_after_crash_from_step_checkpoint(tmp_path):
    ref = _model()
    fit(ref, NoisyData(), out_dir=tmp_path / "a", **CFG)

    def crash(event, state):
        if event == "step" and state.step == 9:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), NoisyData(), out_dir=tmp_path / "b", checkpoint_every=4, callbacks=[crash], **CFG)
    ck = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ck["state"]["step"] == 8 and ck["state"]["batch"] == 2  # epoch 2, two batches in
    resumed = _model(seed=5)
    fit(resumed, NoisyData(), out_dir=tmp_path / "b", resume=True, **CFG)
    _same(ref, resumed)


def test_resume_flags(tmp_path):
    with pytest.raises(FileNotFoundError, match="last.pt"):
        fit(_model(), NoisyData(), out_dir=tmp_path, resume=True, **CFG)
    with pytest.raises(ValueError, match="out_dir"):
        fit(_model(), NoisyData(), resume=True, **CFG)
    h = fit(_model(), NoisyData(), out_dir=tmp_path, resume="auto", **{**CFG, "epochs": 1})
    assert len(h) == 2
    # a finished run resumed with more epochs continues where it ended
    h = fit(_model(), NoisyData(), out_dir=tmp_path, resume="auto", **CFG)
    assert [r["epoch"] for r in h.epochs] == [0, 1, 2]


class Explode(nn.Module):
    """Finite until its scale parameter is pushed past a threshold, then NaN."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(144, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.lin(x.flatten(1))
        return out * float("nan") if self.calls == 7 else out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = Explode()  # call 1: the class-count probe; calls 2..: training steps 1..
    with pytest.raises(NonFiniteLossError, match=r"at step 6 \(epoch 1, batch 6\).*last\.pt"):
        fit(m, NoisyData(), out_dir=tmp_path, checkpoint_every=4, **{**CFG, "epochs": 1})
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_step_log_is_thinned_to_a_bounded_size(monkeypatch):
    from njetify.train import history as H

    monkeypatch.setattr(H, "MAX_STEP_POINTS", 8)
    h = H.History()
    for step in range(1, 41):
        h.log_step(step, step / 10, float(step), {"c1": 0.5})
    steps = [p["step"] for p in h.steps]
    assert len(steps) <= 8 and steps == list(range(h.step_log["every"], 41, h.step_log["every"]))
    assert h.step_log["every"] == 8 and h.steps[-1]["loss"] == pytest.approx(38.5)  # mean since the point before
    again = H.History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again.steps == h.steps and again.step_log == h.step_log


def test_sigint_stops_after_the_step_with_a_checkpoint(tmp_path):
    """The first SIGINT lets the step finish, writes last.pt at that position and raises TrainingInterrupted."""
    import os
    import signal

    from njetify.train import TrainingInterrupted

    ref = _model()
    fit(ref, NoisyData(), out_dir=tmp_path / "a", **CFG)

    def press_ctrl_c(event, state):
        if event == "step" and state.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stop:
        fit(_model(), NoisyData(), out_dir=tmp_path / "b", callbacks=[press_ctrl_c], **CFG)
    assert (stop.value.step, stop.value.epoch, stop.value.batch) == (3, 0, 3)
    assert stop.value.checkpoint == tmp_path / "b" / "last.pt"
    assert load_checkpoint(stop.value.checkpoint)["state"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    resumed = _model(seed=7)
    fit(resumed, NoisyData(), out_dir=tmp_path / "b", resume=True, **CFG)
    _same(ref, resumed)
