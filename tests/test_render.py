"""Tables that fit the terminal: module paths are shortened in the middle, never dropped."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

import njetify
from njetify.textfit import Column, PathTable, shorten_middle

from surgery_models import TinyResNet


def render(obj, width: int) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False).print(obj)
    return buf.getvalue().splitlines()


def shows(lines: list[str], path: str) -> bool:
    """Some line starts with ``path``, whole or shortened in the middle (head…tail)."""
    for line in lines:
        first = line.split(" ", 1)[0]
        if first == path:
            return True
        if "…" in first:
            head, tail = first.split("…", 1)
            if path.startswith(head) and path.endswith(tail) and len(first) < len(path):
                return True
    return False


def test_shorten_middle():
    assert shorten_middle("layer1.0.conv1", 20) == "layer1.0.conv1"
    short = shorten_middle("stages.3.blocks.2.conv_dw", 16)
    assert len(short) == 16 and short.startswith("stages") and short.endswith("conv_dw") and "…" in short


def test_path_table_drops_optional_columns_before_paths():
    cols = [Column("module"), Column("a"), Column("extra", optional=True)]
    table = PathTable(cols, [["encoder.layer4.2.conv2.weight_thing", "x" * 10, "y" * 30]], min_path=16)
    keep, width = table.layout(80)
    assert keep == [0, 1, 2] and width == 35  # the whole path
    keep, width = table.layout(40)
    assert keep == [0, 1] and width == 28  # 'extra' went first, the path stays
    lines = render(table, 30)
    assert max(map(len, lines)) <= 30 and shows(lines, "encoder.layer4.2.conv2.weight_thing")


@pytest.mark.parametrize("width", [80, 60, 44])
def test_conversion_report_fits_and_shows_every_path(width):
    _, report = njetify.convert(TinyResNet(), example_inputs=torch.randn(1, 3, 32, 32))
    lines = render(report, width)
    assert max(map(len, lines)) <= width
    for row in report.rows:
        assert shows(lines, row.path), (row.path, "\n".join(lines))


def test_summary_table_fits_and_shows_every_path():
    net, _ = njetify.convert(TinyResNet(), example_inputs=torch.randn(1, 3, 32, 32))
    summary = njetify.summarize(net, (3, 32, 32))
    for width in (80, 50):
        lines = render(summary.table(), width)
        assert max(map(len, lines)) <= width
        assert all(shows(lines, r.path) for r in summary.layers)


MATRIX = ["timm:resnet18", "timm:resnet50d", "timm:efficientnet_b0", "timm:mobilenetv3_small_100", "timm:regnetx_002",
          "timm:densenet121", "timm:convnext_atto", "tv:resnet18", "tv:vgg11_bn", "tv:mobilenet_v3_small"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MATRIX)
def test_matrix_models_fit_80_columns(name):
    model = njetify.create_model(name)
    net, report = njetify.convert(model, example_inputs=torch.randn(1, 3, 64, 64))
    lines = render(report, 80)
    assert max(map(len, lines)) <= 80
    assert all(shows(lines, row.path) for row in report.rows)
    summary = njetify.summarize(net, (3, 64, 64))
    lines = render(summary.table(), 80)
    assert max(map(len, lines)) <= 80 and all(shows(lines, r.path) for r in summary.layers)
