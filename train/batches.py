"""Training batches: random windows from normalised clips, with the paper's mixup.

An epoch is first *planned*: flat arrays saying, for every window of the epoch in order, which
clip it comes from, where it starts, and its mixup partner and weight. The plan is a pure
function of the generator passed in (the trainer seeds it with ``(seed, epoch)``), so the
batches are the same whether they are assembled in this process, in DataLoader workers, or
split over the ranks of a distributed run.

Mixup partners (same machine type, another id) are drawn from one index array per type, with
the clips of each id in a contiguous block: memory O(clips), where a list of every clip's
partners would be O(clips^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mtad.edge_runtime.features import Normalization

from .feature_cache import FeatureStore


@dataclass
class Batch:
    x: np.ndarray  # (B, n_mels, window) normalised (and possibly mixed) log-mel
    target: np.ndarray  # (B, n_classes) soft labels, rows sum to 1
    mixed: np.ndarray  # (B,) bool


@dataclass
class EpochPlan:
    """One epoch's windows, in training order."""

    clip: np.ndarray  # (N,) store index of the window's clip
    start: np.ndarray  # (N,) first frame of the window
    partner: np.ndarray  # (N,) store index of the mixup partner, -1 when not mixed
    partner_start: np.ndarray  # (N,) first frame of the partner's window (0 when not mixed)
    lam: np.ndarray  # (N,) weight of the clip's own window; 1 when not mixed

    def __len__(self) -> int:
        return len(self.clip)


class WindowSampler:
    """Plans and assembles an epoch's windows; all randomness comes from the generator passed in."""

    def __init__(self, store: FeatureStore, indices: list[int], class_of: dict[str, int], norms: dict[str, Normalization], window: int):
        self.store = store
        self.window = window
        self.class_of = class_of
        self.norms = norms
        self.n_classes = len(class_of)
        self.lengths = np.diff(np.asarray(store.offsets)).astype(np.int64)
        idx = np.asarray(indices, dtype=np.int64)
        self.indices = idx[self.lengths[idx] >= window] if idx.size else idx
        if not self.indices.size:
            raise ValueError(f"no training clip is at least {window} frames long")
        clips = [store.clips[i] for i in self.indices]
        _, type_code = np.unique([c.machine_type for c in clips], return_inverse=True)
        _, id_code = np.unique([c.machine_id for c in clips], return_inverse=True)
        machine_code = type_code * (id_code.max() + 1) + id_code  # sorts by (type, id)
        # Per type, its clips grouped by id (stable, so in index order inside each id).
        order = np.lexsort((np.arange(len(self.indices)), machine_code, type_code))
        self._grouped = self.indices[order]
        t_sorted, m_sorted = type_code[order], machine_code[order]
        self._type_lo = np.searchsorted(t_sorted, type_code, "left")
        type_hi = np.searchsorted(t_sorted, type_code, "right")
        self._id_lo = np.searchsorted(m_sorted, machine_code, "left")
        self._id_size = np.searchsorted(m_sorted, machine_code, "right") - self._id_lo
        self.n_partners = (type_hi - self._type_lo) - self._id_size  # same type, another id
        # per store index: class and machine type, for assembling batches without dict look-ups
        self._class = np.full(len(store), -1, np.int64)
        self._class[self.indices] = [class_of[c.machine] for c in clips]
        type_names = sorted(norms)
        self._type = np.full(len(store), -1, np.int64)
        self._type[self.indices] = [type_names.index(c.machine_type) for c in clips]
        self._mean = np.stack([norms[t].mean for t in type_names])[:, None, :]  # (types, 1, n_mels)
        self._std = np.stack([norms[t].std for t in type_names])[:, None, :]

    def plan(self, rng: np.random.Generator, windows_per_clip: int, mixup_prob: float) -> EpochPlan:
        """The epoch's windows: each eligible clip ``windows_per_clip`` times, shuffled; a window
        is mixed with probability ``mixup_prob`` with a uniformly drawn clip of the same type and
        another id, weight ``lam ~ U(0, 1)``."""
        pos = rng.permutation(np.repeat(np.arange(len(self.indices)), windows_per_clip))
        n = len(pos)
        clip = self.indices[pos]
        start = rng.integers(0, self.lengths[clip] - self.window + 1)
        n_partners = self.n_partners[pos]
        mixed = (n_partners > 0) & (rng.random(n) < mixup_prob)
        k = rng.integers(0, np.maximum(n_partners, 1))  # the k-th clip of the type, skipping the clip's own id block
        id_first = self._id_lo[pos] - self._type_lo[pos]
        k = k + (k >= id_first) * self._id_size[pos]
        partner = np.where(mixed, self._grouped[self._type_lo[pos] + k], -1)
        partner_len = self.lengths[np.where(mixed, partner, clip)]
        partner_start = np.where(mixed, rng.integers(0, partner_len - self.window + 1), 0)
        lam = np.where(mixed, rng.uniform(0.0, 1.0, n), 1.0)
        return EpochPlan(clip, start, partner, partner_start, lam)

    def _windows(self, clips: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Normalised windows ``(B, n_mels, window)`` float32: the same arithmetic as
        :meth:`Normalization.apply`, for the whole batch at once."""
        first = np.asarray(self.store.offsets)[clips] + starts
        raw = np.stack([self.store.data[f : f + self.window] for f in first])  # (B, window, n_mels): contiguous reads
        t = self._type[clips]
        x = ((raw - self._mean[t]) / self._std[t]).astype(np.float32, copy=False)
        return np.ascontiguousarray(x.transpose(0, 2, 1))

    def batch(self, plan: EpochPlan, items: np.ndarray) -> Batch:
        """Assemble the windows ``items`` (positions in ``plan``) into a batch."""
        items = np.asarray(items, dtype=np.int64)
        clip, partner, lam = plan.clip[items], plan.partner[items], plan.lam[items]
        xs = self._windows(clip, plan.start[items])
        mixed = partner >= 0
        target = np.zeros((len(items), self.n_classes), np.float32)
        rows = np.arange(len(items))
        target[rows, self._class[clip]] = lam.astype(np.float32)
        if mixed.any():
            m = np.flatnonzero(mixed)
            other = self._windows(partner[m], plan.partner_start[items][m])
            # float32 weights, as numpy applies a Python float to a float32 array
            xs[m] = lam[m].astype(np.float32)[:, None, None] * xs[m] + (1 - lam[m]).astype(np.float32)[:, None, None] * other
            target[m, self._class[partner[m]]] = (1 - lam[m]).astype(np.float32)
        return Batch(xs, target, mixed)

    def epoch(self, rng: np.random.Generator, windows_per_clip: int, batch_size: int, mixup_prob: float):
        """Yield the epoch's batches in this process (shuffled order, last partial batch kept)."""
        plan = self.plan(rng, windows_per_clip, mixup_prob)
        for b in range(0, len(plan), batch_size):
            yield self.batch(plan, np.arange(b, min(b + batch_size, len(plan))))


def rank_slices(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[np.ndarray, int]]:
    """This rank's share of each global batch: ``(plan positions, global batch size)`` per batch.

    Global batch ``b`` is windows ``[b * batch_size, (b + 1) * batch_size)`` of the plan; it is
    cut into ``world`` contiguous parts whose sizes differ by at most one, so the ranks never
    overlap and together see exactly the single-process batch. A last partial batch with fewer
    windows than ranks is dropped (every rank must take part in each step).
    """
    out = []
    for b in range(0, n, batch_size):
        size = min(batch_size, n - b)
        if size < world:
            break
        out.append((np.array_split(np.arange(b, b + size), world)[rank], size))
    return out


class EpochBatches(torch.utils.data.Dataset):
    """One rank's batches of one epoch, for a ``DataLoader(..., batch_size=None)``.

    Item ``b`` is ``(x, target, weight)``: the rank's part of global batch ``b`` as tensors, and
    the factor (rank items x world / global items) that makes the mean of the ranks' weighted
    mean losses equal the global batch's mean loss.
    """

    def __init__(self, sampler: WindowSampler, plan: EpochPlan, batch_size: int, rank: int = 0, world: int = 1):
        self.sampler, self.plan, self.world = sampler, plan, world
        self.slices = rank_slices(len(plan), batch_size, rank, world)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, b: int):
        items, size = self.slices[b]
        batch = self.sampler.batch(self.plan, items)
        return torch.from_numpy(batch.x), torch.from_numpy(batch.target), len(items) * self.world / size
