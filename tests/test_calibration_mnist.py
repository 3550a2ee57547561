"""Networks trained in this run on MNIST keep their test accuracy through conversion (issue 13).

Three structurally different networks (tests/mnist_nets.py): a plain CNN with BatchNorm, a 5×5
conv, max-pooling and a strided conv; a CIFAR-style ResNet; a MobileNet-like depthwise-separable
net. Converted with the default recipe and 4×128 calibration digits, before any fine-tuning:
order 3 within 0.5 points of the original, order 2 within 2 points. The weight-space figures
(no calibration data) are printed beside them (``-s`` shows them).
"""

import pytest

import njetify

import mnist_nets as M

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", M.NAMES)
def test_trained_network_keeps_its_accuracy(name):
    net = M.trained(name)
    base = M.accuracy(net)
    assert base > 90, f"{name} trained to {base:.2f}% only"
    cal = M.calibration_batches()
    figures = {}
    for order in (3, 2):
        for label, data in (("calibrated", cal), ("weight-space", None)):
            model, report = njetify.convert(net, order=order, calibration_data=data)
            figures[f"order {order} {label}"] = M.accuracy(model) - base
            if data is not None:
                assert report.calibration["fit"] == "output-matching" and not report.calibration["reverted"]
                assert report.calibration["calibrated"] == report.converted > 0
    print(f"{name}: original {base:.2f}%; change in points:", {k: round(v, 2) for k, v in figures.items()})
    assert figures["order 3 calibrated"] >= -0.5
    assert figures["order 2 calibrated"] >= -2.0
