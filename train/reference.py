"""PyTorch reference runner: same ``infer(batch) -> (pred, logits, embedding)`` interface as the edge runners."""

from __future__ import annotations

import numpy as np
import torch

from .model import MultitaskModel


class TorchRunner:
    """Eval-mode PyTorch inference on numpy windows ``(N, n_mels, window)``."""

    backend = "pytorch"
    precision = "fp32"

    def __init__(self, model: MultitaskModel, device: str = "cpu", batch_size: int = 64):
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outs = [], [], []
        for i in range(0, batch.shape[0], self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch[i : i + self.batch_size])).to(self.device)
            for acc, t in zip(outs, self.model(x)):
                acc.append(t.float().cpu().numpy())
        return tuple(np.concatenate(o) for o in outs)

    __call__ = infer
