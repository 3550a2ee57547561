"""TiedNJetBranch: branch k of a :class:`~njetify.layers.tied.TiedNJetConv2d`, at the path of the conv it replaced."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ._fx import as_traced_leaf
from . import bake_form
from .protocol import SigmaModule

if TYPE_CHECKING:
    from .tied import TiedNJetConv2d


class TiedNJetBranch(SigmaModule):
    """Branch k of a :class:`TiedNJetConv2d`: a drop-in replacement for the branch's conv.

    Holds no parameters of its own except in branch 0, which registers the owner as ``tied``.
    Shapes: ``(N, C_in, H, W)`` → ``(N, C_out, H', W')``.
    """

    def __init__(self, owner: TiedNJetConv2d, index: int):
        super().__init__()
        self.index = index
        if index == 0:
            self.tied = owner
        else:
            object.__setattr__(self, "_owner", owner)

    @property
    def owner(self) -> TiedNJetConv2d:
        """The module that holds the shared α, the σ's and the biases."""
        return self.tied if self.index == 0 else self._owner

    @property
    def sigma(self) -> torch.Tensor:
        """This branch's σ in pixels, shape ``(1,)``."""
        return self.owner.sigma[self.index : self.index + 1]

    def scale_parameter(self) -> nn.Parameter:
        """The owner's ``log_sigma`` (all K branches' σ; this branch reads entry ``index``)."""
        return self.owner.log_sigma

    def filters(self) -> torch.Tensor:
        """This branch's materialised filter ``(out_channels, in_channels/groups, s, s)``."""
        return self.owner.filters(self.index)

    def describe(self) -> dict:
        """Summary row (:meth:`SigmaModule.describe`): kind ``"tied"``, ``tied N=order``."""
        return {"kind": "tied", "op": f"tied N={self.owner.order}", "sigma": float(self.sigma.detach()),
                "size": self.kernel_size[0]}

    def basis_images(self) -> tuple[torch.Tensor, list[str]]:
        """The owner's basis at this branch's σ, labels ``Gij``."""
        from ..basis import basis_orders

        return self.owner.basis(self.index), [f"G{i}{j}" for i, j in basis_orders(self.owner.order)]

    def baked(self) -> nn.Module:
        """This branch without σ: a plain ``nn.Conv2d``, or a :class:`FactorisedConv2d` where that is
        faster (:func:`~njetify.layers.bake_form.choose`); same outputs."""
        o, k = self.owner, self.index
        plan = o._plans.get(k)
        conv = bake_form.choose(lambda: o.to_conv(k), lambda order, why: o.to_factorised(k, order, why),
                                in_channels=o.in_channels, out_channels=o.out_channels, groups=o.groups,
                                size=o.kernel_size(k)[0], order=o.order, per_channel=False,
                                input_shape=None if plan is None else plan[0][0])
        return conv.train(self.training)

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.owner.kernel_size(self.index)

    @property
    def in_channels(self) -> int:
        return self.owner.in_channels

    @property
    def out_channels(self) -> int:
        return self.owner.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaf = as_traced_leaf(self, x)
        return leaf if leaf is not None else self.owner.forward_branch(x, self.index)

    def extra_repr(self) -> str:
        o = self.owner
        sigma = float(self.sigma.detach())
        return f"branch {self.index}/{o.num_branches}, sigma={sigma:.3g}, size={self.kernel_size[0]}"
