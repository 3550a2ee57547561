"""Every change the surgery makes to the user's model goes through a :class:`Rewriter`.

Changes are module swaps at a path (all paths that share the module object), new
children, and a module moved to its traced subclass. Each is journaled, so a conversion
that fails part-way is rolled back and never leaves a half-converted model behind.
"""

from __future__ import annotations

from torch import fx, nn

from ..layers.sizes import label_sizes
from ..layers.traced import retrace


class Rewriter:
    """Module swaps on ``model`` with an undo journal."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._journal: list[tuple] = []

    def paths_of(self, module: nn.Module) -> list[str]:
        """Every path at which ``module`` sits in the model (a shared module has several)."""
        return [p for p, m in self.model.named_modules(remove_duplicate=False) if m is module and p]

    def replace(self, path: str, new: nn.Module) -> list[str]:
        """Put ``new`` wherever the module now at ``path`` sits; returns those paths."""
        old = self.model.get_submodule(path)
        paths = self.paths_of(old) or [path]
        for p in paths:
            parent_path, _, name = p.rpartition(".")
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            self._journal.append(("set", parent, name, old))
            setattr(parent, name, new)
        label_sizes(new, paths[0])  # its size messages name where it sits
        return paths

    def add_child(self, parent: nn.Module, name: str, child: nn.Module) -> None:
        """Register ``child`` as ``parent.<name>`` (a new name)."""
        if name in parent._modules or hasattr(parent, name):
            raise ValueError(f"{type(parent).__name__} already has an attribute {name!r}")
        self._journal.append(("add", parent, name, None))
        parent.add_module(name, child)

    def retrace(self, module: nn.Module, graph: fx.Graph) -> None:
        """Give ``module`` the forward of ``graph`` (see :func:`njetify.layers.traced.retrace`)."""
        self._journal.append(("class", module, None, type(module)))
        retrace(module, graph)

    def rollback(self) -> None:
        """Undo every change, newest first."""
        while self._journal:
            kind, obj, name, old = self._journal.pop()
            if kind == "set":
                setattr(obj, name, old)
            elif kind == "add":
                delattr(obj, name)
            else:
                obj.__class__ = old

    def commit(self) -> None:
        """Forget the journal (the conversion succeeded)."""
        self._journal.clear()
