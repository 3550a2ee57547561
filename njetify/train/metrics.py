"""Running metrics that can be saved, resumed and summed across ranks.

Each meter keeps float64 sums in one tensor, so the state is a tensor (checkpointable)
and the reduction across DDP ranks is a single ``all_reduce(SUM)``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _Meter:
    def __init__(self, size: int):
        self.sums = torch.zeros(size, dtype=torch.float64)

    def reset(self) -> None:
        self.sums.zero_()

    def state_dict(self) -> dict:
        return {"sums": self.sums.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.sums = state["sums"].to(torch.float64).clone()

    def all_reduce(self, device: torch.device) -> None:
        """Sum the running totals over all ranks (no-op outside a process group)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = self.sums.to(device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            self.sums = t.cpu()


class ClassificationMeter(_Meter):
    """Mean loss, top-1 and top-5 accuracy (in %) over the samples seen."""

    def __init__(self):
        super().__init__(4)  # loss·n, top1, top5, n

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float) -> None:
        """``logits (N, K)``, ``target (N,)``, ``loss`` the batch-mean loss."""
        n = target.shape[0]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == target[:, None]
        self.sums += torch.tensor(
            [loss * n, float(hit[:, 0].sum()), float(hit.any(1).sum()), n], dtype=torch.float64
        )

    def compute(self) -> dict[str, float]:
        """``{"loss", "acc", "top5"}`` (accuracies in %); NaN before any update."""
        loss, c1, c5, n = self.sums.tolist()
        n = n or float("nan")
        return {"loss": loss / n, "acc": 100.0 * c1 / n, "top5": 100.0 * c5 / n}


class SegmentationMeter(_Meter):
    """Mean loss, pixel accuracy and mIoU (in %) from a confusion matrix, ignoring ``ignore_index``."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        super().__init__(2 + num_classes * num_classes)  # loss·n, n, confusion (target, pred)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float) -> None:
        """``logits (N, K, H, W)``, ``target (N, H, W)``, ``loss`` the batch-mean loss."""
        k = self.num_classes
        pred = logits.argmax(1)
        valid = target != self.ignore_index
        t, p = target[valid].long(), pred[valid].long()
        if t.numel() and (int(t.max()) >= k or int(t.min()) < 0):
            raise ValueError(f"target holds class {int(t.max())} but the model predicts {k} classes "
                             f"(labels must be in [0, {k}) or ignore_index={self.ignore_index})")
        conf = torch.bincount(t * k + p, minlength=k * k).to(torch.float64).cpu()
        n = target.shape[0]
        self.sums[0] += loss * n
        self.sums[1] += n
        self.sums[2:] += conf

    def confusion(self) -> torch.Tensor:
        """``(K, K)`` pixel counts, rows = target class, columns = predicted class."""
        return self.sums[2:].view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        """``{"loss", "pixel_acc", "miou"}`` in %; mIoU averages the classes present in target or prediction."""
        c = self.confusion()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean()) if present.any() else float("nan")
        total = float(c.sum())
        n = float(self.sums[1]) or float("nan")
        return {
            "loss": float(self.sums[0]) / n,
            "pixel_acc": 100.0 * float(tp.sum()) / total if total else float("nan"),
            "miou": 100.0 * miou,
        }


def inverse_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """Class weights ``total / (K · count_c)`` from per-class pixel ``counts (K,)``; absent classes get 0."""
    counts = counts.to(torch.float64)
    k = counts.numel()
    w = torch.where(counts > 0, counts.sum() / (k * counts.clamp(min=1)), torch.zeros_like(counts))
    return w.to(torch.float32)
