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


def test_sizes_show_the_size_at_conversion_and_the_legend_clears_the_bars(run_dir):
    from matplotlib.figure import Figure

    from njetify.plots import _bars, _sizes

    h = History.load(run_dir / "history.json")
    _, _, _, layers, _, at_conversion, learned, _ = _sizes(h)
    assert at_conversion == [h.epochs[0]["layers"][n]["size"] for n in layers]  # σ₀'s size, before any step
    assert learned == [h.epochs[-1]["layers"][n]["size"] for n in layers]
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    _bars(ax, ["a", "b"], [("original kernel", [3, 3], "0.7"), ("at conversion (σ₀)", [5, 3], "0.5"),
                           ("learned", [5, 7], "0.2"), ("unknown", [None, None], "r")])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["original kernel", "at conversion (σ₀)", "learned"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.y0 >= axes.y1  # above the plot area: it cannot cover a bar


def test_filters_have_colour_bars_and_name_their_channels(tmp_path, monkeypatch):
    import njetify.plots as P

    saved, real = {}, P._save
    monkeypatch.setattr(P, "_save", lambda fig, path: saved.setdefault("fig", fig) and real(fig, path))
    layer = NJetConv2d(2, 6, order=2, sigma=0.8)
    _png(P.plot_filters(layer, tmp_path / "f.png", name="c1", max_filters=4, in_channel=1), min_w=200)
    fig = saved["fig"]
    title = fig._suptitle.get_text()
    assert "output channels 0–3 of 6" in title and "input channel 1 of 2" in title and "basis" in title
    labels = [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]
    assert labels == ["basis value", "weight"]
