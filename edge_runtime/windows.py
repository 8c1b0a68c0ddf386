"""Cutting a clip's log-mel into model windows and putting next-frame predictions back together.

Windows overlap so that the scored frames (those after each window's warm-up) tile the
clip exactly once. Because the WaveNet is causal with a finite receptive field, the scored
predictions equal those of one pass over the whole clip.
"""

from __future__ import annotations

import numpy as np


def window_starts(n_frames: int, window: int, warmup: int) -> list[int]:
    """Start frames of the windows covering a clip of ``n_frames`` frames."""
    if n_frames < window:
        raise ValueError(f"clip has {n_frames} frames, the model window needs {window}")
    step = window - warmup - 1  # scored targets per window
    starts = list(range(0, n_frames - window + 1, step))
    if starts[-1] != n_frames - window:
        starts.append(n_frames - window)
    return starts


def make_windows(x: np.ndarray, window: int, warmup: int) -> tuple[np.ndarray, list[int]]:
    """``(n_mels, T)`` -> ``(N, n_mels, window)`` float32 batch and its start frames."""
    starts = window_starts(x.shape[1], window, warmup)
    batch = np.stack([x[:, s : s + window] for s in starts]).astype(np.float32, copy=False)
    return batch, starts


def prediction_residual(x: np.ndarray, pred: np.ndarray, starts: list[int], warmup: int) -> np.ndarray:
    """Input minus predicted next frame for every scored frame, ``(n_mels, T - warmup - 1)``.

    ``pred[w, :, t]`` is window ``w``'s estimate of ``x[:, starts[w] + t + 1]``.
    """
    n_frames = x.shape[1]
    window = pred.shape[2]
    predicted = np.empty_like(x, dtype=np.float32)
    for w, s in enumerate(starts):
        # targets s+warmup+1 .. s+window-1 come from predictions at t = warmup .. window-2
        predicted[:, s + warmup + 1 : s + window] = pred[w, :, warmup : window - 1]
    return (x[:, warmup + 1 : n_frames] - predicted[:, warmup + 1 : n_frames]).astype(np.float32, copy=False)


def clip_outputs(x: np.ndarray, infer, window: int, warmup: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Run ``infer((N, n_mels, window)) -> (pred, logits[, embedding])`` over a normalised clip.

    Returns the prediction residual ``(n_mels, T - warmup - 1)``, the logits ``(N, K)`` and the
    window embeddings ``(N, E)`` (None for a model without that output).
    """
    batch, starts = make_windows(x, window, warmup)
    out = infer(batch)
    embedding = np.asarray(out[2]) if len(out) > 2 else None
    return prediction_residual(x, np.asarray(out[0]), starts, warmup), np.asarray(out[1]), embedding
