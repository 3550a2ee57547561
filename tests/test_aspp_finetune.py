"""Short fine-tune of a tied ASPP head on MNIST multi-scale segmentation (examples/aspp_mnist_seg.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

MNIST = Path("/work/shared/data/MNIST/raw")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "aspp_mnist_seg.py"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason="MNIST not found at /work/shared/data")
def test_tied_aspp_finetune_moves_sigma_and_improves_miou():
    spec = importlib.util.spec_from_file_location("aspp_mnist_seg", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    res = mod.main(["--data", str(MNIST.parents[1]), "--steps", "80", "--finetune", "80", "--every", "40",
                    "--val", "64", "--batch", "8", "--calib", "2"])
    (step0, sigma0, miou0), *_, (step_n, sigma_n, miou_n) = res["history"]
    assert step0 == 0 and step_n == 80
    assert sigma0 == [0.5, 1.0, 1.5, 2.0]  # σ₀ = rate / 2
    assert max(abs(a - b) for a, b in zip(sigma0, sigma_n)) > 1e-3
    assert miou_n > miou0
    assert res["tied_data_aware"] >= res["tied_weight_space"] - 0.02
