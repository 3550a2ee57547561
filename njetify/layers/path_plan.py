"""Measured path choice: time the candidate paths once per call signature, keep the winner.

A cost model read off a few shapes on one machine was 1.5–6.5× off on others (DESIGN §7),
so ``path="auto"`` measures, as ``torch.backends.cudnn.benchmark`` does: the first eager call
of a *signature* (input shape, channels, groups, filter size, order, stride, pads, padding
mode, dtype, device, threads, training or not) runs every candidate a few times — forward,
plus backward when training, on the real tensors without touching ``.grad`` — and caches
the fastest. Layers with the same signature share the answer. The cost model of
:mod:`~njetify.layers.path_cost` only prunes candidates it predicts hopeless
(> :data:`PRUNE` × the best prediction), and a candidate whose warm-up run was over
:data:`DROP` × the fastest warm-up is not run again.

Never inside a compiled graph (the layers pick a static path there) and never when
``NJETIFY_PATH_TIMING=0`` (then the cost model decides). :func:`plans` lists the decisions;
:func:`export_plans` / :func:`import_plans` carry them through ``njetify.save`` / ``load``.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from typing import Callable

import torch

log = logging.getLogger("njetify.paths")

#: Candidates predicted slower than this many times the best prediction are not timed.
PRUNE = 4.0
#: Timed runs per candidate (after one warm-up); the minimum counts.
REPS = 2
#: A candidate whose warm-up run took over this many times the fastest warm-up is not timed again
#: (a factorised path 9× slower than dense cost seconds per extra run on large batches).
DROP = 3.0

_PLANS: dict[tuple, dict] = {}


def timing_enabled() -> bool:
    """Whether ``auto`` may time candidates (``NJETIFY_PATH_TIMING=0`` turns it off)."""
    return os.environ.get("NJETIFY_PATH_TIMING", "1") != "0"


def machine(device: torch.device) -> str:
    """What a timing is valid for: the device's name (CPU: architecture and cores) and torch's threads."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()}-{os.cpu_count()}cpu"
    return f"{device.type}:{name}:threads={torch.get_num_threads()}:torch={torch.__version__}"


def lookup(key: tuple) -> str | None:
    """The cached winner for ``key``, or None."""
    entry = _PLANS.get(key)
    return None if entry is None else entry["path"]


def decide(key: tuple, runs: dict[str, Callable[[], object]], predicted: dict[str, float], device,
           extra: dict[str, float] | None = None) -> str:
    """The fastest of ``runs`` (path → a callable doing one forward, or forward + backward), cached per ``key``.

    ``predicted``: the cost model's seconds per path (used to prune and when timing is off);
    ``extra``: measured seconds to add to a path's time (a share of work done once for several calls).
    """
    hit = lookup(key)
    if hit is not None:
        return hit
    best_pred = min(predicted.values())
    candidates = [p for p in runs if predicted.get(p, 0.0) <= PRUNE * best_pred]
    if len(candidates) <= 1 or not timing_enabled():
        path = min(predicted, key=predicted.get) if candidates else next(iter(runs))
        if len(candidates) == 1:
            path = candidates[0]
        _PLANS[key] = {"path": path, "seconds": {}, "machine": machine(torch.device(device))}
        return path
    extra = extra or {}
    first = {p: time_call(runs[p], device) + extra.get(p, 0.0) for p in candidates}  # warm-up, timed
    fastest = min(first.values())
    times = {p: t for p, t in first.items() if t > DROP * fastest}  # hopeless already: not timed again
    timed = [p for p in candidates if p not in times]
    times.update({p: float("inf") for p in timed})
    for _ in range(REPS):
        for p in timed:
            times[p] = min(times[p], time_call(runs[p], device) + extra.get(p, 0.0))
    path = min(times, key=times.get)
    _PLANS[key] = {"path": path, "seconds": times, "machine": machine(torch.device(device))}
    log.info("%s: timed %s → %s", _describe(key),
             ", ".join(f"{p} {1e3 * t:.2f} ms" for p, t in times.items()), path)
    return path


def timings(key: tuple) -> dict[str, float]:
    """The measured seconds per candidate of the decision for ``key`` ({} when none was timed)."""
    entry = _PLANS.get(key)
    return {} if entry is None else dict(entry["seconds"])


def time_call(run: Callable[[], object], device) -> float:
    """Seconds of one call of ``run`` (synchronised on CUDA)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _describe(key: tuple) -> str:
    return "signature " + ", ".join(str(k) for k in key[:6])


def plans() -> list[dict]:
    """Every decision of this process: signature, chosen path, timed seconds per candidate, machine."""
    return [{"key": list(map(_jsonable, k)), **v} for k, v in _PLANS.items()]


def export_plans(keys=None) -> list[dict]:
    """Decisions (all, or those of ``keys``) as JSON-able dicts for a saved model's metadata."""
    wanted = None if keys is None else set(keys)
    return [{"key": [_jsonable(x) for x in k], "path": v["path"], "machine": v["machine"]}
            for k, v in _PLANS.items() if wanted is None or k in wanted]


def import_plans(entries) -> int:
    """Adopt saved decisions made on this kind of machine (others are timed again); returns how many."""
    n = 0
    for e in entries or []:
        try:
            key = tuple(_from_json(x) for x in e["key"])
            device = next(x for x in key if isinstance(x, torch.device))
        except (KeyError, TypeError, ValueError, StopIteration):
            continue
        if e.get("machine") == machine(device) and key not in _PLANS:
            _PLANS[key] = {"path": e["path"], "seconds": {}, "machine": e["machine"]}
            n += 1
    return n


def clear_plans() -> None:
    """Forget every decision (the next call of each signature times again)."""
    _PLANS.clear()


def _jsonable(x):
    if isinstance(x, torch.device):
        return {"device": str(x)}
    if isinstance(x, torch.dtype):
        return {"dtype": str(x).removeprefix("torch.")}
    if isinstance(x, tuple):
        return {"tuple": [_jsonable(v) for v in x]}
    return x


def _from_json(x):
    if isinstance(x, dict):
        if "device" in x:
            return torch.device(x["device"])
        if "dtype" in x:
            return getattr(torch, x["dtype"])
        if "tuple" in x:
            return tuple(_from_json(v) for v in x["tuple"])
        raise ValueError(x)
    if isinstance(x, list):
        return tuple(_from_json(v) for v in x)
    return x
