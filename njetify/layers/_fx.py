"""Staying one node when another tool traces a converted model with torch.fx.

njetify's layers compute sizes from the current σ (a value, not a shape), which symbolic
tracing cannot follow. A tracer that does not know them as leaves (torchvision's
``create_feature_extractor``, a user's own fx pass) calls their ``forward`` with proxies;
the forward then records itself as one ``call_module`` node, exactly as a leaf would be.
"""

from __future__ import annotations

from torch import fx, nn


def as_traced_leaf(module: nn.Module, *args):
    """A ``call_module`` proxy of ``module`` when ``args[0]`` is an fx proxy (we are being traced),
    else None (run the forward eagerly)."""
    if not args or not isinstance(args[0], fx.Proxy):
        return None
    tracer = args[0].tracer
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


def leaf_or(module: nn.Module, x, run):
    """``module`` as one traced leaf while fx traces it (:func:`as_traced_leaf`), else ``run(x)``."""
    leaf = as_traced_leaf(module, x)
    return leaf if leaf is not None else run(x)
