"""Find DeepLab ASPP heads in a traced graph (DESIGN §5).

A head is ≥ 2 square ``nn.Conv2d`` with kernel > 1 and stride 1 that read the same
tensor, whose outputs — each through its own chain of single-input ops (BN, ReLU,
a pointwise conv, dropout, …) — meet in one sum or concatenation, and whose
receptive fields ``d·(k−1)`` are pairwise distinct (different rates). Branches that
differ in channels, groups, bias or padding mode cannot share α: they are reported
with the reason and the others are tied when at least two remain. A branch conv that
is defined next to a head but never runs in the traced graph is reported, not tied.
"""

from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ...layers.convertible import conv_kind
from ...layers.tie_checks import tie_mismatch
from .trace import Region

_ADD_FUNCS = {operator.add, operator.iadd, torch.add, builtins.sum, torch.sum}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__", "__radd__"}
_CAT_FUNCS = {torch.cat, torch.concat, torch.stack}


@dataclass
class AsppHead:
    """Parallel dilated branches found in a graph (paths are full module paths in the model)."""

    path: str  # the branches' common parent module
    branches: list[str]
    dilations: list[int]
    kernel: int
    merge: str  # "sum" | "concat"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (branch path, reason)


@dataclass
class AsppSkip:
    """A parallel-branch structure that was not tied, and why."""

    path: str
    branches: list[str]
    reason: str


def may_hold_head(module: nn.Module) -> bool:
    """True when ``module`` holds convs of at least two receptive fields (cheap pre-check)."""
    return len({_receptive(m) for m in module.modules() if _candidate_conv(m)}) >= 2


def _candidate_conv(m: nn.Module) -> bool:
    return conv_kind(m) == "ok" and m.stride[0] == 1


def _receptive(m: nn.Conv2d) -> int:
    return m.dilation[0] * (m.kernel_size[0] - 1)


def find_heads(region: Region) -> tuple[list[AsppHead], list[AsppSkip]]:
    """ASPP heads in a traced region of the model (paths are full module paths)."""
    graph, root, prefix = region.graph, region.root, region.prefix
    full = region.full_path
    groups: dict[tuple, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        m = root.get_submodule(node.target)
        if not _candidate_conv(m):
            continue
        merge = _merge_root(node)
        if merge is not None:
            groups.setdefault((node.args[0], merge), []).append(node)
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    heads, skips = [], []
    for (_, merge), nodes in groups.items():
        mods = [root.get_submodule(n.target) for n in nodes]
        if len({_receptive(m) for m in mods}) < 2:
            continue
        paths = [full(n.target) for n in nodes]
        kind = "concat" if _is_cat(merge) else "sum"
        head, skip = _select(paths, mods, kind)
        if head is None:
            skips.append(skip)
            continue
        parent = _common_parent(head.branches)
        head.path = parent
        head.skipped += _never_called(root, prefix, parent, called, mods[0])
        heads.append(head)
    return heads, skips


def _select(paths, mods, kind) -> tuple[AsppHead | None, AsppSkip | None]:
    """Keep the largest set of branches that can share α; report the others."""
    sig = lambda m: (m.in_channels, m.out_channels, m.groups, m.bias is not None, m.padding_mode)
    by_sig: dict[tuple, list[int]] = {}
    for i, m in enumerate(mods):
        by_sig.setdefault(sig(m), []).append(i)
    keep = max(by_sig.values(), key=len)
    if len(keep) < 2:
        return None, AsppSkip(_common_parent(paths), paths, tie_mismatch(mods) or "fewer than two compatible branches")
    rf = [_receptive(mods[i]) for i in keep]
    if len(set(rf)) != len(rf):
        dup = sorted({mods[i].dilation[0] for i in keep if rf.count(_receptive(mods[i])) > 1})
        return None, AsppSkip(
            _common_parent(paths), paths, f"branches share a rate ({', '.join(map(str, dup))}): rates must be distinct"
        )
    skipped = []
    for i in range(len(mods)):
        if i not in keep:
            ref = mods[keep[0]]
            skipped.append((paths[i], tie_mismatch([ref, mods[i]]) or "incompatible with the other branches"))
    kernels = {mods[i].kernel_size[0] for i in keep}
    head = AsppHead(
        path="", branches=[paths[i] for i in keep], dilations=[mods[i].dilation[0] for i in keep],
        kernel=kernels.pop() if len(kernels) == 1 else 0, merge=kind, skipped=skipped,
    )
    return head, None


def _never_called(root, prefix, parent, called, ref) -> list[tuple[str, str]]:
    """Convs like the head's branches under ``parent`` that the traced graph never calls."""
    local = parent[len(prefix) + 1 :] if prefix else parent
    if prefix and parent == prefix:
        local = ""
    try:
        scope = root.get_submodule(local)
    except AttributeError:
        return []
    out = []
    for name, m in scope.named_modules():
        target = f"{local}.{name}" if local else name
        if not name or target in called or not isinstance(m, nn.Conv2d) or m.dilation[0] == 1:
            continue
        if m.kernel_size == ref.kernel_size and m.in_channels == ref.in_channels:
            path = f"{prefix}.{target}" if prefix else target
            out.append((path, "never runs in the traced graph: not tied"))
    return out


def _common_parent(paths: list[str]) -> str:
    parts = [p.split(".")[:-1] for p in paths]
    common = []
    for level in zip(*parts):
        if any(x != level[0] for x in level):
            break
        common.append(level[0])
    return ".".join(common)


def _is_add(n: fx.Node) -> bool:
    return (n.op == "call_function" and n.target in _ADD_FUNCS) or (n.op == "call_method" and n.target in _ADD_METHODS)


def _is_cat(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target in _CAT_FUNCS


def _node_inputs(n: fx.Node) -> list[fx.Node]:
    return list(n.all_input_nodes)


def _merge_root(node: fx.Node) -> fx.Node | None:
    """Follow ``node`` through single-input ops to the sum / concat its value flows into (None: none)."""
    cur = node
    for _ in range(64):
        users = list(cur.users)
        if len(users) != 1:
            return None
        u = users[0]
        if _is_cat(u):
            return u
        if _is_add(u):
            while len(u.users) == 1 and _is_add(next(iter(u.users))):
                u = next(iter(u.users))
            return u
        if len(_node_inputs(u)) != 1 or u.op in ("output", "placeholder"):
            return None
        cur = u
    return None
