"""One forward of the converted model per batch, paused at every layer until that layer is fitted.

Fitting layer L needs L's inputs from *every* batch, computed with the layers before L
already fitted. Re-running the model up to L for each L costs O(layers × depth)
forwards; holding all batches' activations in one big batch costs the memory of a
forward on every image at once. Instead each batch runs in its own thread, and a
forward pre-hook on each watched layer parks the thread there: when the batches have
all reached L (or finished), the controller fits L on the parked inputs, then lets
each thread run on, one at a time, to the next watched layer. The cost is one forward
per batch; the memory is what each parked forward holds alive (its live activations),
plus one forward's transient peak.

Only one thread runs at any moment, so models need not be thread-safe; grad mode is
thread-local, so every thread runs under ``torch.no_grad()``. A layer replaced while
threads are parked inside it (the fidelity gate reverting it) finishes that call with
the replacement's output (a forward hook).
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable

import torch
from torch import nn

from ..inputs import call_model

_local = threading.local()


class _Cancelled(BaseException):
    """Unwinds a parked forward when the sweep stops early."""


class _Worker:
    """One batch's forward in its own thread."""

    def __init__(self, sweep: "Sweep", index: int, batch):
        self.sweep, self.index, self.batch = sweep, index, batch
        self.resume, self.arrived = threading.Event(), threading.Event()
        self.key: Hashable | None = None
        self.x: torch.Tensor | None = None
        self.done = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"njetify-calibration-{index}", daemon=True)

    def _run(self) -> None:
        _local.worker = self
        try:
            self._wait()
            with torch.no_grad():
                call_model(self.sweep.model, self.batch)
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the controller
            self.error = e
        finally:
            self.done, self.key, self.x = True, None, None
            self.batch = None
            self.arrived.set()

    def _wait(self) -> None:
        self.resume.wait()
        self.resume.clear()
        if self.sweep.cancelled:
            raise _Cancelled

    def park(self, key: Hashable, x: torch.Tensor) -> None:
        """Called in this thread by a pre-hook: hand ``x`` to the controller and wait."""
        self.key, self.x = key, x
        self.arrived.set()
        self._wait()
        self.key = self.x = None

    def step(self) -> None:
        """Called by the controller: let the thread run to its next park (or its end)."""
        self.arrived.clear()
        self.resume.set()
        self.arrived.wait()


class Sweep:
    """Drive ``model`` over ``batches`` with the modules of ``watch`` (module → key) as park points.

    ``run(fit)`` calls ``fit(key, [(batch index, input), ...])`` once per key, in the order the
    forward reaches them, with the inputs of every batch that reached it; returns the keys
    fitted, in order. Keys no batch reaches are never fitted.
    """

    def __init__(self, model: nn.Module, batches: list, watch: dict[nn.Module, Hashable]):
        self.model, self.batches = model, batches
        self.watch = {id(m): (m, key) for m, key in watch.items()}
        self.finished: set = set()
        self.replacements: dict[int, nn.Module] = {}
        self.cancelled = False

    def replace(self, old: nn.Module, new: nn.Module) -> None:
        """Calls of ``old`` still in progress return ``new``'s output instead."""
        self.replacements[id(old)] = new

    def _pre_hook(self, module, args):
        worker = getattr(_local, "worker", None)
        if worker is None or worker.sweep is not self:
            return None
        key = self.watch[id(module)][1]
        if key not in self.finished:
            worker.park(key, args[0])
        return None

    def _post_hook(self, module, args, out):
        new = self.replacements.get(id(module))
        worker = getattr(_local, "worker", None)
        if new is None or worker is None or worker.sweep is not self:
            return None
        return new(*args)

    def run(self, fit: Callable[[Hashable, list[tuple[int, torch.Tensor]]], None]) -> list:
        handles = []
        for m, _ in self.watch.values():
            handles.append(m.register_forward_pre_hook(self._pre_hook))
            handles.append(m.register_forward_hook(self._post_hook))
        workers = [_Worker(self, i, b) for i, b in enumerate(self.batches)]
        order = []
        try:
            for w in workers:
                w.thread.start()
                w.step()
                self._check(w)
            while True:
                parked = [w for w in workers if not w.done]
                if not parked:
                    break
                groups: dict = {}
                for w in parked:
                    groups.setdefault(w.key, []).append(w)
                key, group = max(groups.items(), key=lambda kv: len(kv[1]))  # first seen wins ties
                fit(key, [(w.index, w.x) for w in group])
                self.finished.add(key)
                order.append(key)
                for w in group:
                    w.step()
                    self._check(w)
        finally:
            self.cancelled = True
            for w in workers:
                if w.thread.ident is None:
                    continue  # never started
                if not w.done:
                    w.step()
                w.thread.join()
            for h in handles:
                h.remove()
        return order

    @staticmethod
    def _check(w: _Worker) -> None:
        if w.error is not None:
            e = w.error
            raise RuntimeError(f"calibration: the converted model fails on calibration batch {w.index} "
                               f"({type(e).__name__}: {e})") from e
