"""Which form a σ convolution takes when it is baked: a plain conv, or the factorised form where it is faster.

The factorised form (:class:`~njetify.layers.factorised_conv.FactorisedConv2d`: 1-D convs + a 1×1
conv) has fewer multiply-adds than the dense filter from 5×5 on, but its depthwise 1-D convolutions
run at a small fraction of a dense conv's rate. Measured on CPU (2 threads, order 3, eval forward,
``uv run python benchmarks/bake_form.py``, docs/measured/bake_form_cpu.txt): on 13 of the 15 points
with 1.7–15.8× fewer MACs the factorised form was 1.3–25× *slower*; it was faster on all 5 points
from 16× on (25×25 filters, and 13×13 on 256 channels). So a MAC rule cannot pick
the form; :func:`choose` measures, as ``path="auto"`` does:

* a layer that has run (its last input shape is known) times both forms on that shape, eval
  forward, once per signature (cached, like the paths of :mod:`~njetify.layers.path_plan`);
* a layer that never ran, or with ``NJETIFY_PATH_TIMING=0``, is baked factorised only where the
  dense filter costs over :data:`FACTORISED_RATIO` times the factorised multiply-adds.

:func:`bake_forms` sets the rule for a block of code (``njetify.bake(model, factorised=...)`` uses
it): ``"auto"`` (the above), ``"never"`` (plain convs only: the plain twin), or a number (a MAC
ratio, no timing).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn

from .factorised_conv import factorised_macs_per_pixel
from . import path_plan
from .path_plan import timing_enabled

__all__ = ["FACTORISED_RATIO", "bake_forms", "check_rule", "choose", "current_rule"]

#: Without a measurement a layer is baked factorised only when its dense filter needs more than this
#: many times the factorised form's multiply-adds per output pixel (where it won on every CPU shape measured).
FACTORISED_RATIO = 16.0

_RULE: list = ["auto"]


@contextlib.contextmanager
def bake_forms(rule="auto"):
    """Within: σ layers bake by ``rule`` — ``"auto"``, ``"never"`` or a MAC ratio (a positive number)."""
    _set(rule)
    try:
        yield current_rule()
    finally:
        _RULE.pop()


def check_rule(rule):
    """``rule`` as :func:`current_rule` holds it (``"never"`` → ``inf``); ValueError unless it is ``"auto"``,
    ``"never"`` or a positive MAC ratio."""
    if rule == "never":
        return math.inf
    if rule != "auto" and not (isinstance(rule, (int, float)) and not isinstance(rule, bool) and rule > 0):
        raise ValueError(f"bake: factorised must be 'auto', 'never' or a positive MAC ratio (e.g. 16), got {rule!r}")
    return rule


def _set(rule) -> None:
    _RULE.append(check_rule(rule))


def current_rule():
    """The rule in force: ``"auto"`` or a MAC ratio (``inf``: never factorised)."""
    return _RULE[-1]


def choose(dense: Callable[[], nn.Module], factorised: Callable[[str, str], nn.Module], *, in_channels: int,
           out_channels: int, groups: int, size: int, order: int, per_channel: bool,
           input_shape: tuple | None) -> nn.Module:
    """The baked module: ``dense()`` or ``factorised(order, reason)``, by :func:`current_rule`.

    ``input_shape``: ``(N, C, H, W)`` of the layer's last call (None: it never ran); ``size``: the
    filter side in pixels; ``order``: the derivative order.
    """
    dense_macs = out_channels * (in_channels // groups) * size * size
    fact_macs, best = factorised_macs_per_pixel(in_channels, out_channels, groups, size, order, per_channel)
    ratio = dense_macs / fact_macs
    reason = f"dense {size}x{size} filter needs {ratio:.1f}x the multiply-adds of the factorised form"
    rule = current_rule()
    if ratio <= 1.0 or rule == math.inf:
        return dense()
    if rule != "auto" or input_shape is None or not timing_enabled():
        limit = FACTORISED_RATIO if rule == "auto" else rule
        return factorised(best, reason) if ratio > limit else dense()
    return _timed(dense, lambda: factorised(best, reason), input_shape, ratio,
                  (in_channels, out_channels, groups, size, order, best))


def _timed(dense, factorised, input_shape, ratio, signature) -> nn.Module:
    """The faster of the two forms on a zero input of ``input_shape``: an eval forward of each, timed by
    :func:`~njetify.layers.path_plan.decide` (cached per signature, like the layers' paths)."""
    a = dense() if ratio <= 4 * FACTORISED_RATIO else None  # beyond that the dense filter is not worth building
    b = factorised()
    if a is None:
        return b
    device, dtype = a.weight.device, a.weight.dtype
    cin, cout, groups, size, order, best = signature
    # laid out as the layers' path keys (shape, dtype, device, channels, groups, size, order, …), so it is
    # saved and loaded with the model's other decisions (njetify.io) and a loaded model bakes without timing
    key = (tuple(input_shape), dtype, device, cin, cout, groups, size, order, "bake", best, torch.get_num_threads())
    x = torch.zeros(input_shape, device=device, dtype=dtype)

    def forward(m):
        def run(m=m.eval()):
            with torch.no_grad():
                m(x)
        return run

    won = path_plan.decide(key, {"dense": forward(a), "factorised": forward(b)},
                           {"dense": 1.0, "factorised": 1.0}, device)
    if won == "dense":
        return a
    t = path_plan.timings(key)
    if t:
        b.reason = (f"measured faster than the dense {signature[3]}x{signature[3]} filter "
                    f"({1e3 * t['factorised']:.2f} ms vs {1e3 * t['dense']:.2f} ms on {tuple(input_shape)})")
    return b
