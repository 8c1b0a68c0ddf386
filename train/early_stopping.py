"""Early stopping on a proxy that uses no anomalies: the training loss on the held-out normals.

The clips held out for the scoring statistics never enter a training batch, so their loss is an
unbiased view of how well the model fits unseen normals. It rises when the model starts to
memorise its training clips, and it flattens when more epochs stop paying.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mtad.edge_runtime.windows import window_starts

MAX_WINDOWS = 2048  # enough for a stable mean loss; bounds memory at DCASE size (67 MB of 128 x 64 float32 windows)


def heldout_windows(store, indices: list[int], class_of: dict[str, int], norms, window: int, warmup: int,
                    n_classes: int, max_windows: int = MAX_WINDOWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised windows of the held-out clips (tiled as in scoring, then thinned evenly to at
    most ``max_windows``) and their one-hot id targets ``(N, n_classes)``."""
    spots = [(i, s) for i in indices for s in window_starts(store.get(i).shape[1], window, warmup)]
    if len(spots) > max_windows:
        spots = [spots[k] for k in np.linspace(0, len(spots) - 1, max_windows).round().astype(int)]
    xs, ids = [], []
    for i, s in spots:
        clip = store.clips[i]
        xs.append(norms[clip.machine_type].apply(np.asarray(store.get(i)[:, s : s + window])))
        ids.append(class_of[clip.machine])
    x = torch.from_numpy(np.stack(xs).astype(np.float32))
    return x, F.one_hot(torch.tensor(ids), n_classes).float()


@torch.no_grad()
def heldout_loss(loss_fn, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, device: str, batch: int = 256) -> float:
    """Mean total loss (``loss_fn(x, target)[0]``) over the held-out windows, in eval mode."""
    was_training = model.training
    model.eval()
    total = 0.0
    for s in range(0, len(x), batch):
        xb = x[s : s + batch].to(device)
        total += float(loss_fn(xb, target[s : s + batch].to(device))[0]) * len(xb)
    model.train(was_training)
    return total / len(x)


@dataclass
class EarlyStopping:
    """Best held-out loss so far, its epoch and weights; ``patience`` epochs without improvement stop."""

    patience: int
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict = field(default_factory=dict)

    def update(self, epoch: int, loss: float, model: torch.nn.Module) -> bool:
        """Record ``epoch``'s (1-based) held-out loss; True when training should stop."""
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch
            self.best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        return epoch - self.best_epoch >= self.patience

    def to_dict(self) -> dict:
        return {"patience": self.patience, "best_loss": self.best_loss, "best_epoch": self.best_epoch, "best_state": self.best_state}

    @classmethod
    def from_dict(cls, d: dict) -> EarlyStopping:
        return cls(int(d["patience"]), float(d["best_loss"]), int(d["best_epoch"]), dict(d["best_state"]))
