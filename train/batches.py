"""Training batches: random windows from normalised clips, with the paper's mixup."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtad.edge_runtime.features import Normalization

from .feature_cache import FeatureStore


@dataclass
class Batch:
    x: np.ndarray  # (B, n_mels, window) normalised (and possibly mixed) log-mel
    target: np.ndarray  # (B, n_classes) soft labels, rows sum to 1
    mixed: np.ndarray  # (B,) bool


class WindowSampler:
    """Draws windows for one epoch; all randomness comes from the generator passed in."""

    def __init__(self, store: FeatureStore, indices: list[int], class_of: dict[str, int], norms: dict[str, Normalization], window: int):
        self.store = store
        self.indices = [i for i in indices if store.offsets[i + 1] - store.offsets[i] >= window]
        if not self.indices:
            raise ValueError(f"no training clip is at least {window} frames long")
        self.window = window
        self.class_of = class_of
        self.norms = norms
        self.n_classes = len(class_of)
        # mixup partners: clips of the same machine type with a different id
        self.partners: dict[int, np.ndarray] = {}
        for i in self.indices:
            c = store.clips[i]
            self.partners[i] = np.array(
                [j for j in self.indices if store.clips[j].machine_type == c.machine_type and store.clips[j].machine_id != c.machine_id]
            )

    def _window(self, i: int, rng: np.random.Generator) -> np.ndarray:
        x = self.store.get(i)
        s = int(rng.integers(0, x.shape[1] - self.window + 1))
        return self.norms[self.store.clips[i].machine_type].apply(np.asarray(x[:, s : s + self.window]))

    def epoch(self, rng: np.random.Generator, windows_per_clip: int, batch_size: int, mixup_prob: float):
        """Yield the epoch's batches (shuffled order, last partial batch kept)."""
        order = rng.permutation(np.repeat(self.indices, windows_per_clip))
        for b in range(0, len(order), batch_size):
            items = order[b : b + batch_size]
            xs = np.empty((len(items), self.store.data.shape[0], self.window), np.float32)
            target = np.zeros((len(items), self.n_classes), np.float32)
            mixed = np.zeros(len(items), bool)
            for k, i in enumerate(items):
                xs[k] = self._window(i, rng)
                cls_i = self.class_of[self.store.clips[i].machine]
                partners = self.partners[i]
                if partners.size and rng.random() < mixup_prob:
                    j = int(partners[rng.integers(partners.size)])
                    lam = float(rng.uniform(0.0, 1.0))
                    xs[k] = lam * xs[k] + (1 - lam) * self._window(j, rng)
                    target[k, cls_i] += lam
                    target[k, self.class_of[self.store.clips[j].machine]] += 1 - lam
                    mixed[k] = True
                else:
                    target[k, cls_i] = 1.0
            yield Batch(xs, target, mixed)
