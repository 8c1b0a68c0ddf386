"""Pseudo-anomalies: generic perturbations of normal log-mel windows, as extra classes for the
ResNet's auxiliary task.

With a few very distinct machine ids, telling ids apart is easy and teaches the classifier
little that a fault would disturb. Asking it also to tell each id's normal windows from the
same windows with a perturbation added makes it sensitive to the kinds of change machine
faults make: an added noise band (leaks, rubbing), a train of impulses (bearing, gear and
cavitation knocks), a slow modulation of a band (imbalance, stick-slip) and a band losing
energy (missing clicks, a clogged flow). Each perturbation is drawn at random place, width,
rate and strength, so none matches one fault; the anomaly score stays ``-log p(id, normal)``.

Windows are normalised log-mel (per-bin zero mean, unit std), so levels are in those units.
"""

from __future__ import annotations

import math

import torch

KINDS = ("band_noise", "impulses", "modulation", "attenuation")
FRAME_RATE = 16000 / 512  # frames per second of the default front end (hop 512 at 16 kHz)


def _band_mask(b: int, n_mels: int, gen: torch.Generator, device) -> torch.Tensor:
    """(B, n_mels, 1) 0/1 masks of a random band 4..24 bins wide per window."""
    width = torch.randint(4, 25, (b, 1), generator=gen).to(device)
    lo = (torch.rand(b, 1, generator=gen).to(device) * (n_mels - width)).long()
    bins = torch.arange(n_mels, device=device)[None]
    return ((bins >= lo) & (bins < lo + width)).float()[:, :, None]


def _uniform(b: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(b, 1, 1, generator=gen)).to(device)


def perturb(x: torch.Tensor, kinds: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply ``KINDS[kinds[i]]`` to window ``x[i]`` (``(B, n_mels, T)``); returns a new tensor."""
    b, n_mels, t = x.shape
    dev = x.device
    band = _band_mask(b, n_mels, gen, dev)
    frames = torch.arange(t, device=dev, dtype=x.dtype)[None, None]
    out = x.clone()
    # band_noise: a steady noise floor added in the band (log-add, so quiet bins rise most)
    level = _uniform(b, -1.0, 1.5, gen, dev) + 0.3 * torch.randn(b, 1, t, generator=gen).to(dev)
    noisy = torch.logaddexp(x, level.expand(b, n_mels, t))
    # impulses: one-frame bursts every 3..12 frames
    period = torch.randint(3, 13, (b, 1, 1), generator=gen).to(dev)
    phase = torch.randint(0, 12, (b, 1, 1), generator=gen).to(dev)
    on = ((frames.long() + phase) % period == 0).float()
    knocked = torch.logaddexp(x, _uniform(b, 0.0, 2.5, gen, dev) + x.new_zeros(b, n_mels, t)) * on + x * (1 - on)
    # modulation: the band's level swings at 0.5..8 Hz
    f = _uniform(b, 0.5, 8.0, gen, dev)
    phi = _uniform(b, 0.0, 2 * math.pi, gen, dev)
    modulated = x + _uniform(b, 0.3, 1.2, gen, dev) * torch.sin(2 * math.pi * f * frames / FRAME_RATE + phi)
    # attenuation: the band loses energy
    attenuated = x - _uniform(b, 0.5, 2.0, gen, dev)
    variants = torch.stack([noisy, knocked, modulated, attenuated])  # (K, B, n_mels, T)
    chosen = variants[kinds.to(dev), torch.arange(b, device=dev)]
    return out * (1 - band) + chosen * band


def pseudo_targets(target: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Soft labels over ``n_ids * (1 + len(KINDS))`` classes for perturbed windows: the id's
    mass moves to block ``1 + kind`` (block 0 holds the normal classes)."""
    b, n_ids = target.shape
    out = target.new_zeros(b, n_ids * (1 + len(KINDS)))
    cols = (1 + kinds.to(target.device))[:, None] * n_ids + torch.arange(n_ids, device=target.device)[None]
    return out.scatter(1, cols, target)


def n_classes(n_ids: int, fraction: float) -> int:
    """Classifier outputs for ``n_ids`` ids: the normal classes, plus one block per kind when used."""
    return n_ids * (1 + len(KINDS)) if fraction > 0 else n_ids
