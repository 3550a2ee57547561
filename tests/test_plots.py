"""njetify.plots: PNGs from a fine-tuning history."""

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from njetify.layers import NJetConv2d, SafeSubsample
from njetify.plots import plot_curves, plot_history, plot_sigma, plot_sigma_layers, plot_sizes
from njetify.train import History, fit


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = NJetConv2d(1, 4, order=2, sigma=0.8)
        self.sub = SafeSubsample(self.c1, stride=2)
        self.c2 = NJetConv2d(4, 4, order=2, sigma=0.8, sigma_per="channel")
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.relu(self.c2(F.relu(self.sub(self.c1(x))))).mean((2, 3)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (32,), generator=g)
    data = TensorDataset(torch.randn(32, 1, 10, 10, generator=g) + y[:, None, None, None], y)
    fit(Tiny(), data, data, epochs=2, batch_size=8, lr=0.1, sigma_lr=0.3, out_dir=out, progress=False)
    return out


def _png(path, min_w=300):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= min_w and im.height >= 200
        colors = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 10  # something was drawn


def test_plot_history_writes_three_pngs(run_dir, tmp_path):
    backend = matplotlib.get_backend()
    paths = plot_history(run_dir, tmp_path, prefix="mnist_")
    assert sorted(p.name for p in paths) == ["mnist_curves.png", "mnist_sigma.png", "mnist_sigma_layers.png",
                                                "mnist_sizes.png"]
    for p in paths:
        _png(p)
    assert matplotlib.get_backend() == backend  # the global backend is left alone


def test_each_plot_accepts_history_object_or_file(run_dir, tmp_path):
    h = History.load(run_dir / "history.json")
    assert len(h) == 3 and h.meta["feature_sizes_original"] == {"sub": [5, 5]}
    _png(plot_sigma(h, tmp_path / "s.png"))
    _png(plot_sizes(run_dir / "history.json", tmp_path / "f.png"))
    _png(plot_sigma_layers(h, tmp_path / "l.png"))
    _png(plot_curves(str(run_dir), tmp_path / "c.png"))
    assert [p["step"] for p in h.steps] == list(range(1, 9))  # σ of every step of the 2 × 4 steps


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no N-Jet layers"):
        plot_sigma(History({}, [{"epoch": 0, "step": 0}]), tmp_path / "s.png")
    with pytest.raises(TypeError, match="history must be a History or a path"):
        plot_curves(42, tmp_path / "c.png")
    with pytest.raises(FileNotFoundError, match="history.json"):
        plot_curves(tmp_path, tmp_path / "c.png")
    assert plot_history(History({}, [{"epoch": 0, "step": 0}]), tmp_path) == [tmp_path / "curves.png"]


def test_no_pyplot_state(run_dir, tmp_path):
    """Drawing leaves pyplot alone: no figure is registered, the backend is unchanged."""
    import sys

    before = matplotlib.get_backend()
    plot_history(run_dir, tmp_path)
    assert matplotlib.get_backend() == before
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
