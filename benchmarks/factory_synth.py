#!/usr/bin/env python3
"""factory_synth.py - synthetic machine-sound anomaly-detection data set.

A held-out benchmark for unsupervised anomaly detectors: physically motivated
sound models of four machine types (three ids each) recorded in a synthetic,
changing factory environment.  Detectors train on normal clips only and are
scored on normal vs. anomalous test clips.  Nothing here was tuned on a
detector, so it tests whether a method generalises beyond the data it was
developed on.

CLI
    factory_synth.py OUT [--seed N] [--train 40] [--test 50] [--seconds 10]

    --train  normal training clips per machine id
    --test   normal AND anomalous test clips per machine id (2 x --test)

Layout (DCASE 2020 Task 2 style, 16 kHz mono 16-bit PCM WAV)
    OUT/<type>/train/normal_id_XX_NNNNNNNN.wav
    OUT/<type>/test/normal_id_XX_NNNNNNNN.wav
    OUT/<type>/test/anomaly_id_XX_NNNNNNNN.wav
    OUT/manifest.csv   path,machine_type,machine_id,split,label,fault
  XX is the id (00, 02, 04), NNNNNNNN the 8-digit index within
  (split, label, id).  manifest.csv is written last (temp file + rename), so
  a directory without it is an unfinished set.

Machine types (ids of one type are the same kind of machine with a different
size, speed and resonances; ids and resonances also vary with --seed)
    pump        centrifugal pump: shaft and blade-pass tones, hydraulic
                turbulence modulated at blade pass, motor hum, casing modes
    fan         belt-driven ventilator: aerodynamic broadband noise with a
                vortex hump, blade-pass tones and blade-pass modulation,
                gusting, motor tones, duct modes
    gearbox     single-stage gearbox: gear-mesh harmonics with shaft-rate
                sidebands and transmission-error jitter, oil churning,
                shaft tones, housing modes
    compressor  reciprocating piston compressor: crank-angle-locked suction
                and discharge valve impacts ringing at valve-plate modes,
                gas pulsation harmonics, intake hiss, motor/belt tones

Fault kinds (each anomalous clip: one fault; test anomalies cycle through
the three kinds of the type; severity = fault RMS (over its active part)
relative to the machine's own RMS, drawn per clip from the range shown)
    pump        cavitation      [-22, +2] dB  bubble-collapse crackle, bursts
                                              phased with blade passing
                bearing_outer   [-24,  0] dB  impacts at BPFO (3.0-3.6 x shaft)
                                              with slip jitter, ringing modes
                seal_leak       [-20, +3] dB  jet hiss (+ sometimes whistle)
    fan         imbalance       [-20, +3] dB  1x amplitude modulation + 1x..8x
                                              vibration radiated by panels
                belt_squeal     [-22,  0] dB  intermittent stick-slip squeal
                blade_rub       [-24,  0] dB  once-per-rev scraping bursts
    gearbox     tooth_damage    [-24,  0] dB  once-per-rev impact + local
                                              mesh dropout (sidebands)
                bearing_inner   [-24,  0] dB  impacts at BPFI (4.8-5.8 x shaft),
                                              load-zone modulated at 1x
                loose_rattle    [-22, +2] dB  intermittent rattle of a loose
                                              cover, driven by 1x vibration
    compressor  valve_leak      [-20, +3] dB  hiss gated by the high-pressure
                                              part of each cylinder cycle
                piston_knock    [-24,  0] dB  impacts at TDC/BDC force reversal
                loose_mount     [-20, +3] dB  loosened mount: new low
                                              resonance + shifted housing mode
                                              re-radiating pulsation, rattle
  Faults without their own intermittency are, with probability 0.3, present
  for only part of the clip (25-60 % of it).

Normal variation per clip: operating point (speed +-2-4 %, slow drift, load),
component phases and levels, resonance jitter, factory background (colour,
level, mains hum, distant machines, transients: impacts/hammering, speech-like
babble, reversing beepers, air releases, passing vehicles, reverberation),
machine 0-10 dB above the steady background, microphone tilt, and recording
gain (-26 dBFS RMS +-3 dB, peaks kept below full scale).

Determinism: every clip has its own numpy Generator seeded by
SeedSequence(seed, type, id, split, label, index) with strings hashed by
SHA-256, so a clip can be regenerated alone (see render()) and equal seeds give
identical sets.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import time

import numpy as np
import soundfile as sf
from scipy.interpolate import CubicSpline
from scipy.signal import fftconvolve

SR = 16000
IDS = (0, 2, 4)
TYPES = ("pump", "fan", "gearbox", "compressor")
TARGET_DBFS = -26.0
MAINS = 50.0
TWO_PI = 2.0 * np.pi


# --------------------------------------------------------------------------
# seeding
# --------------------------------------------------------------------------
def stable_int(s: str) -> int:
    """Deterministic 64-bit integer from a string (SHA-256, not hash())."""
    return int.from_bytes(hashlib.sha256(s.encode("utf-8")).digest()[:8], "little")


def clip_rng(seed, mtype, mid, split, label, index) -> np.random.Generator:
    """Generator for one clip, seeded from (seed, type, id, split, label, index)."""
    ss = np.random.SeedSequence([int(seed) % 2**64, stable_int(mtype), int(mid),
                                 stable_int(split), stable_int(label), int(index)])
    return np.random.default_rng(ss)


def _rng(*parts) -> np.random.Generator:
    """Generator from ints/strings (used for per-type and per-id machine specs)."""
    ent = [stable_int(p) if isinstance(p, str) else int(p) % 2**64 for p in parts]
    return np.random.default_rng(np.random.SeedSequence(ent))


# --------------------------------------------------------------------------
# DSP helpers
# --------------------------------------------------------------------------
_CACHE: dict = {}


def rfreqs(n):
    """rfft bin frequencies for length n (cached)."""
    key = ("f", n)
    if key not in _CACHE:
        _CACHE[key] = np.fft.rfftfreq(n, 1.0 / SR)
    return _CACHE[key]


def timebase(n):
    """Time axis in seconds for length n (cached)."""
    key = ("t", n)
    if key not in _CACHE:
        _CACHE[key] = np.arange(n) / SR
    return _CACHE[key]


def rms(x):
    """Root mean square (never zero)."""
    return float(np.sqrt(np.mean(np.square(x)))) + 1e-12


def unit(x):
    """Scale to unit RMS."""
    return x / rms(x)


def db(g):
    """dB to linear amplitude."""
    return 10.0 ** (np.asarray(g) / 20.0)


def fft_filter(x, H):
    """Filter x with frequency response H on the rfft grid (circular)."""
    return np.fft.irfft(np.fft.rfft(x) * H, len(x))


def spectral_noise(rng, n, mag):
    """Unit-RMS Gaussian noise with amplitude spectrum mag (rfft grid)."""
    nb = n // 2 + 1
    X = (rng.standard_normal(nb) + 1j * rng.standard_normal(nb)) * mag
    X[0] = 0.0
    return unit(np.fft.irfft(X, n))


def band(f, lo=None, hi=None, order=2):
    """Butterworth-like band-pass magnitude."""
    g = np.ones_like(f)
    if lo:
        g = g / np.sqrt(1.0 + (lo / np.maximum(f, 1e-3)) ** (2 * order))
    if hi:
        g = g / np.sqrt(1.0 + (f / hi) ** (2 * order))
    return g


def bump(f, fc, octaves):
    """Gaussian bump on a log-frequency axis (peak 1 at fc)."""
    return np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / fc) / octaves) ** 2)


def tilt(f, db_per_oct, ref=1000.0):
    """Spectral tilt magnitude, 0 dB at ref."""
    return (np.maximum(f, 10.0) / ref) ** (db_per_oct / 6.0206)


def modal(f, modes):
    """Complex response of a sum of 2nd-order resonances [(f0, Q, gain), ...]."""
    fs = np.maximum(f, 1e-3)
    H = np.zeros(len(f), complex)
    for f0, q, g in modes:
        H += g / (1.0 + 1j * q * (fs / f0 - f0 / fs))
    return H


def jitter_modes(rng, modes, rel=0.01):
    """Small per-clip resonance drift (temperature, mounting)."""
    return [(f0 * (1 + rng.normal(0, rel)), q * np.exp(rng.normal(0, 0.05)), g)
            for f0, q, g in modes]


def smooth(rng, n, rate_hz=1.0):
    """Smooth zero-mean random curve (~unit std) with ~rate_hz knots per second."""
    k = max(4, int(n / SR * rate_hz) + 3)
    m = min(n, max(512, 8 * k))
    y = CubicSpline(np.linspace(0, 1, k), rng.standard_normal(k))(np.linspace(0, 1, m))
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, m), y)


def rotation(rng, n, f_nom, spread, wobble, rate=0.5):
    """Rotation rate curve (Hz) and cumulative revolutions for a drifting speed."""
    f0 = f_nom * (1 + rng.uniform(-spread, spread))
    fr = f0 * (1 + wobble * smooth(rng, n, rate))
    cyc = np.cumsum(fr) / SR + rng.random()
    return fr, cyc


def tones(rng, cyc, mults, amps):
    """Sum of cosines a*cos(2*pi*m*cyc + random phase), integer m >= 1.

    Uses powers of exp(2j*pi*frac(cyc)) instead of cos of large arguments."""
    mults = [int(m) for m in mults]
    amps = np.asarray(amps, float)
    phases = rng.uniform(0, TWO_PI, len(mults))
    z = np.exp(1j * TWO_PI * (cyc - np.floor(cyc)))
    out = np.zeros(len(cyc))
    zp, p = z.copy(), 1
    for m, a, ph in sorted(zip(mults, amps, phases)):
        while p < m:
            zp *= z
            p += 1
        if a > 0:
            out += (a * np.cos(ph)) * zp.real - (a * np.sin(ph)) * zp.imag
    return out


def crossings(cyc, mult=1.0, offset=0.0):
    """Sample indices where cyc*mult - offset crosses an integer."""
    c = np.floor(cyc * mult - offset)
    return np.flatnonzero(np.diff(c)) + 1


def pulse_train(n, idx, amps):
    """Unit-sample impulses of given amplitudes at indices (out of range dropped)."""
    x = np.zeros(n)
    idx = np.asarray(idx, int)
    ok = (idx >= 0) & (idx < n)
    np.add.at(x, idx[ok], np.asarray(amps)[ok])
    return x


def window_gate(t, start, length, fade):
    """Smooth on/off gate (smoothstep edges) over time axis t."""
    g = np.clip(np.minimum(t - start, start + length - t) / fade, 0.0, 1.0)
    return g * g * (3 - 2 * g)


def bursts(rng, n, count, dmin, dmax, fade):
    """Envelope with `count` random bursts of duration dmin..dmax seconds."""
    t = timebase(n)
    T = n / SR
    env = np.zeros(n)
    for _ in range(count):
        d = min(rng.uniform(dmin, dmax), T)
        s = rng.uniform(0, max(T - d, 1e-3))
        env = np.maximum(env, window_gate(t, s, d, fade))
    return env


def mode_set(trng, irng, count, lo, hi, qlo, qhi, scale, jit=0.06):
    """Resonances shared by a type (trng), scaled/perturbed per id (irng)."""
    bf = np.exp(trng.uniform(np.log(lo), np.log(hi), count))
    bq = trng.uniform(qlo, qhi, count)
    bg = trng.uniform(0.4, 1.0, count)
    f = np.minimum(bf * scale * np.exp(irng.normal(0, jit, count)), 7600.0)
    q = bq * np.exp(irng.normal(0, 0.15, count))
    g = bg * np.exp(irng.normal(0, 0.2, count))
    return [(float(a), float(b), float(c)) for a, b, c in zip(f, q, g)]


def mains_hum(rng, n):
    """Motor magnetic hum at 2x mains and harmonics (unit RMS)."""
    t = timebase(n)
    return unit(tones(rng, t * 2 * MAINS, [1, 2, 3, 4],
                      rng.uniform(0.2, 1.0, 4) * np.array([1, 0.5, 0.3, 0.2])))


def bearing_impacts(rng, n, cyc, fr_nom, ratio, modes, zone=None):
    """Defect impacts at ratio x shaft rate with 1 % slip jitter, ringing at modes."""
    ratio = ratio * (1 + rng.normal(0, 0.005))
    idx = crossings(cyc, ratio, rng.random())
    per = SR / (fr_nom * ratio)
    idx = idx + np.round(rng.normal(0, 0.01 * per, len(idx))).astype(int)
    amps = np.exp(rng.normal(0, 0.25, len(idx)))
    if zone is not None:  # inner race: passes through the load zone once per rev
        ph = rng.uniform(0, TWO_PI)
        amps *= (0.5 + 0.5 * np.cos(TWO_PI * cyc[np.clip(idx, 0, n - 1)] + ph)) ** 1.5 + 0.1
    x = pulse_train(n, idx, amps)
    return fft_filter(x, modal(rfreqs(n), jitter_modes(rng, modes, 0.01)))


# --------------------------------------------------------------------------
# pump
# --------------------------------------------------------------------------
def pump_spec(trng, irng, k):
    """Per-id pump parameters (id 00 largest/slowest)."""
    size = (1.0, 0.9, 0.8)[k] * irng.uniform(0.97, 1.03)
    return dict(
        fr=(24.6, 29.4, 35.5)[k] * irng.uniform(0.98, 1.02),
        blades=(5, 6, 7)[k],
        bpf_db=trng.uniform(-10, -5) + irng.uniform(-2, 2),
        bpf_decay=trng.uniform(0.35, 0.55),
        flow_peak=trng.uniform(200, 400) / size,
        flow_slope=trng.uniform(0.8, 1.3),
        flow_hi=irng.uniform(2500, 4500),
        hum_db=irng.uniform(-22, -14),
        modes=mode_set(trng, irng, 4, 250, 3000, 8, 30, 1 / size),
        bpfo=irng.uniform(3.0, 3.6),
        brg_modes=mode_set(trng, irng, 2, 2500, 5000, 15, 40, 1.0),
        cav_lo=irng.uniform(1200, 2000),
        leak_fc=irng.uniform(3000, 5500),
    )


def pump_normal(rng, sp, n):
    """Healthy centrifugal pump."""
    f = rfreqs(n)
    fr, cyc = rotation(rng, n, sp["fr"], 0.03, 0.003)
    load = rng.uniform(0.4, 1.0)
    B = sp["blades"]
    mag = band(f, 30, sp["flow_hi"], 2) / (1 + (f / sp["flow_peak"]) ** sp["flow_slope"])
    flow = spectral_noise(rng, n, mag)
    flow *= (1 + rng.uniform(0.08, 0.2) * np.cos(TWO_PI * B * cyc + rng.uniform(0, TWO_PI))
             + 0.06 * smooth(rng, n, 2.0))
    h = np.arange(1, 6)
    bp = tones(rng, cyc * B, h, sp["bpf_decay"] ** (h - 1) * np.exp(rng.normal(0, 0.2, 5)))
    bp *= 1 + 0.1 * smooth(rng, n, 1.5)
    shaft = tones(rng, cyc, [1, 2, 3], np.array([1, 0.5, 0.25]) * np.exp(rng.normal(0, 0.3, 3)))
    hiss = spectral_noise(rng, n, band(f, 2000, 7000, 2))
    x = (unit(flow) + db(sp["bpf_db"] + 6 * (load - 0.7)) * unit(bp)
         + db(-22) * unit(shaft) + db(sp["hum_db"] + rng.uniform(-2, 2)) * mains_hum(rng, n)
         + db(-30) * hiss)
    H = 0.6 + modal(f, jitter_modes(rng, sp["modes"]))
    return fft_filter(x, H), dict(f=f, cyc=cyc, load=load, H=H)


def pump_cavitation(rng, sp, c, n):
    """Bubble-collapse crackle, bursts phased with blade passing."""
    env = (0.5 + 0.5 * np.cos(TWO_PI * sp["blades"] * c["cyc"] + rng.uniform(0, TWO_PI))) ** 2
    env *= np.clip(0.6 + 0.5 * smooth(rng, n, 1.5), 0.05, 1.5)
    hits = rng.random(n) < rng.uniform(600, 2500) / SR * env * 2.5
    x = np.zeros(n)
    k = int(hits.sum())
    x[hits] = (rng.pareto(2.5, k) + 0.2) * rng.choice([-1.0, 1.0], k)
    return fft_filter(x, band(c["f"], sp["cav_lo"] * rng.uniform(0.9, 1.1), 7500, 2) * c["H"]), None


def pump_bearing_outer(rng, sp, c, n):
    """Outer-race bearing defect."""
    return bearing_impacts(rng, n, c["cyc"], sp["fr"], sp["bpfo"], sp["brg_modes"]), None


def pump_seal_leak(rng, sp, c, n):
    """Leaking mechanical seal: jet hiss, pressure pulsation at blade pass, whistle."""
    f = c["f"]
    fc = sp["leak_fc"] * rng.uniform(0.85, 1.15)
    x = spectral_noise(rng, n, bump(f, fc, 1.2) * band(f, 800, 7800, 2))
    x *= (1 + 0.25 * np.cos(TWO_PI * sp["blades"] * c["cyc"] + rng.uniform(0, TWO_PI))
          + 0.15 * smooth(rng, n, 3.0))
    if rng.random() < 0.4:
        fw = rng.uniform(1800, 4000) * (1 + 0.004 * smooth(rng, n, 4.0))
        x = x + db(rng.uniform(-10, 0)) * np.sqrt(2) * np.cos(TWO_PI * np.cumsum(fw) / SR)
    return x, None


# --------------------------------------------------------------------------
# fan
# --------------------------------------------------------------------------
def fan_spec(trng, irng, k):
    """Per-id fan parameters."""
    size = (1.0, 0.9, 1.12)[k] * irng.uniform(0.97, 1.03)
    return dict(
        fr=(16.0, 19.0, 13.5)[k] * irng.uniform(0.98, 1.02),
        blades=(7, 8, 9)[k],
        aero_peak=trng.uniform(300, 700) / size,
        aero_beta=trng.uniform(0.3, 0.6),
        bpf_db=trng.uniform(-12, -6) + irng.uniform(-2, 2),
        bpf_decay=trng.uniform(0.3, 0.5),
        am_depth=trng.uniform(0.1, 0.25),
        belt_ratio=irng.uniform(1.6, 2.4),
        modes=mode_set(trng, irng, 4, 150, 2500, 4, 15, 1 / size),
        panel_modes=mode_set(trng, irng, 3, 80, 600, 10, 30, 1 / size),
        squeal_f=irng.uniform(1200, 3000),
        rub_lo=irng.uniform(1500, 3000),
    )


def fan_normal(rng, sp, n):
    """Healthy belt-driven fan."""
    f = rfreqs(n)
    fr, cyc = rotation(rng, n, sp["fr"], 0.04, 0.004)
    load = rng.uniform(0.5, 1.0)
    B = sp["blades"]
    r = np.maximum(f, 1.0) / (sp["aero_peak"] * rng.uniform(0.9, 1.1))
    aero = spectral_noise(rng, n, r / (1 + r * r) ** (0.5 + sp["aero_beta"]) * band(f, 20, 7500, 2))
    aero *= (1 + sp["am_depth"] * rng.uniform(0.7, 1.3) * np.cos(TWO_PI * B * cyc + rng.uniform(0, TWO_PI))
             + rng.uniform(0.04, 0.1) * smooth(rng, n, 1.0))
    h = np.arange(1, 7)
    bpf = tones(rng, cyc * B, h, sp["bpf_decay"] ** (h - 1) * np.exp(rng.normal(0, 0.25, 6)))
    motor = tones(rng, cyc * sp["belt_ratio"], [1, 2], [1.0, 0.5])
    x = (unit(aero) + db(sp["bpf_db"] + 4 * (load - 0.75)) * unit(bpf)
         + db(-24) * unit(motor) + db(rng.uniform(-26, -18)) * mains_hum(rng, n))
    H = 0.7 + modal(f, jitter_modes(rng, sp["modes"]))
    x = fft_filter(x, H)
    return x, dict(f=f, cyc=cyc, load=load, H=H, x=x)


def fan_imbalance(rng, sp, c, n):
    """Rotor imbalance: 1x modulation of the whole sound + panel-radiated 1x..8x."""
    am = c["x"] * np.cos(TWO_PI * c["cyc"] + rng.uniform(0, TWO_PI))
    h = np.arange(1, 9)
    vib = tones(rng, c["cyc"], h, h ** -1.2 * np.exp(rng.normal(0, 0.3, 8)))
    vib = fft_filter(vib, modal(c["f"], jitter_modes(rng, sp["panel_modes"], 0.02)) + 0.1)
    return unit(am) + db(rng.uniform(-6, 3)) * unit(vib), None


def fan_belt_squeal(rng, sp, c, n):
    """Intermittent belt slip squeal (stick-slip tone with harmonics)."""
    env = bursts(rng, n, int(rng.integers(1, 4)), 0.3, 1.6, 0.02)
    t = timebase(n)
    fsq = sp["squeal_f"] * rng.uniform(0.92, 1.08) * (
        1 + 0.015 * smooth(rng, n, 3.0) + 0.01 * np.sin(TWO_PI * rng.uniform(3, 8) * t))
    ph = TWO_PI * np.cumsum(fsq) / SR
    x = np.cos(ph) + db(-8) * np.cos(2 * ph + 1.0) + db(-14) * np.cos(3 * ph + 2.0)
    belt = c["cyc"] * rng.uniform(0.3, 0.6)
    x *= env * (0.6 + 0.4 * np.cos(TWO_PI * belt))
    return x, env


def fan_blade_rub(rng, sp, c, n):
    """Blade tip rubbing the housing once per revolution (some revs skip)."""
    th = rng.random()
    u = c["cyc"] - th + 0.5
    d = (u % 1.0) - 0.5
    rev = np.floor(u).astype(int)
    rev -= rev.min()
    nrev = rev.max() + 1
    keep = (rng.random(nrev) > rng.uniform(0, 0.4)) * np.exp(rng.normal(0, 0.3, nrev))
    width = rng.uniform(0.003, 0.012) * sp["fr"]
    g = np.exp(-0.5 * (d / width) ** 2) * keep[rev]
    x = rng.standard_normal(n) * g
    return fft_filter(x, band(c["f"], sp["rub_lo"], 7000, 2) * c["H"]), None


# --------------------------------------------------------------------------
# gearbox
# --------------------------------------------------------------------------
def gearbox_spec(trng, irng, k):
    """Per-id gearbox parameters."""
    size = (1.0, 0.9, 1.1)[k] * irng.uniform(0.97, 1.03)
    return dict(
        f1=(24.5, 29.0, 20.5)[k] * irng.uniform(0.98, 1.02),
        z1=(21, 19, 23)[k], z2=(57, 53, 61)[k],
        mesh_decay=trng.uniform(0.3, 0.6),
        mesh_db=trng.uniform(-4, 2) + irng.uniform(-2, 2),
        sb_depth=trng.uniform(0.03, 0.08),
        modes=mode_set(trng, irng, 5, 400, 4000, 10, 40, 1 / size),
        brg_modes=mode_set(trng, irng, 2, 2800, 5500, 15, 40, 1.0),
        bpfi=irng.uniform(4.8, 5.8),
        rattle_modes=mode_set(trng, irng, 3, 600, 3500, 30, 80, 1.0),
    )


def gearbox_normal(rng, sp, n):
    """Healthy single-stage gearbox."""
    f = rfreqs(n)
    f1, cyc1 = rotation(rng, n, sp["f1"], 0.04, 0.004)
    cyc2 = cyc1 * sp["z1"] / sp["z2"] + rng.random()
    load = rng.uniform(0.3, 1.0)
    mesh_c = sp["z1"] * cyc1 + 0.004 * smooth(rng, n, 40.0)  # transmission-error jitter
    h = np.arange(1, 5)
    mesh = tones(rng, mesh_c, h, sp["mesh_decay"] ** (h - 1) * np.exp(rng.normal(0, 0.25, 4)))
    mesh *= (1 + sp["sb_depth"] * (np.cos(TWO_PI * cyc1 + rng.uniform(0, TWO_PI))
                                   + 0.7 * np.cos(TWO_PI * cyc2 + rng.uniform(0, TWO_PI)))
             + 0.05 * smooth(rng, n, 2.0))
    mesh = db(sp["mesh_db"] + 8 * np.log10(load / 0.65)) * unit(mesh)
    churn = spectral_noise(rng, n, band(f, 40, 1500, 2) / (1 + f / 300.0))
    brg = spectral_noise(rng, n, band(f, 2500, 7000, 2))
    shafts = tones(rng, cyc1, [1, 2], [1, 0.4]) + tones(rng, cyc2, [1, 2], [0.8, 0.3])
    x = (mesh + db(rng.uniform(-3, 0)) * churn + db(-28) * brg + db(-22) * unit(shafts)
         + db(rng.uniform(-24, -16)) * mains_hum(rng, n))
    H = 0.4 + modal(f, jitter_modes(rng, sp["modes"]))
    return fft_filter(x, H), dict(f=f, cyc=cyc1, load=load, H=H, mesh=mesh)


def gearbox_tooth_damage(rng, sp, c, n):
    """Cracked/chipped pinion tooth: once-per-rev impact and local mesh dropout."""
    th = rng.random()
    d = ((c["cyc"] - th + 0.5) % 1.0) - 0.5
    w = np.exp(-0.5 * (d * sp["z1"] / 0.7) ** 2)
    local = fft_filter(-c["mesh"] * w, c["H"])
    idx = crossings(c["cyc"], 1.0, th)
    imp = fft_filter(pulse_train(n, idx, np.exp(rng.normal(0, 0.2, len(idx)))), c["H"])
    return unit(imp) + db(rng.uniform(-10, 0)) * unit(local), None


def gearbox_bearing_inner(rng, sp, c, n):
    """Inner-race bearing defect, modulated by the load zone at shaft rate."""
    return bearing_impacts(rng, n, c["cyc"], sp["f1"], sp["bpfi"], sp["brg_modes"], zone=True), None


def gearbox_loose_rattle(rng, sp, c, n):
    """Intermittent rattle of a loose cover/part, driven by 1x vibration."""
    env = bursts(rng, n, int(rng.integers(2, 5)), 0.5, 2.5, 0.1)
    drive = (0.5 + 0.5 * np.cos(TWO_PI * c["cyc"] + rng.uniform(0, TWO_PI))) ** 4
    p = rng.uniform(20, 80) / SR * env * drive / drive.mean()
    hits = rng.random(n) < p
    x = np.zeros(n)
    x[hits] = np.exp(rng.normal(0, 0.4, int(hits.sum())))
    return fft_filter(x, modal(c["f"], jitter_modes(rng, sp["rattle_modes"], 0.02))), env


# --------------------------------------------------------------------------
# compressor
# --------------------------------------------------------------------------
def compressor_spec(trng, irng, k):
    """Per-id reciprocating compressor parameters."""
    size = (1.0, 0.88, 1.15)[k] * irng.uniform(0.97, 1.03)
    ratio = (1.65, 1.35, 1.95)[k] * irng.uniform(0.98, 1.02)
    return dict(
        fm=24.6, ratio=ratio, ncyl=(2, 2, 3)[k],
        suction_modes=mode_set(trng, irng, 3, 1500, 5000, 10, 30, 1 / size),
        discharge_modes=mode_set(trng, irng, 3, 2000, 6000, 10, 30, 1 / size),
        modes=mode_set(trng, irng, 4, 200, 2500, 5, 20, 1 / size),
        knock_modes=mode_set(trng, irng, 2, 300, 1200, 5, 15, 1 / size),
        puls_decay=trng.uniform(0.75, 0.9),
        so=trng.uniform(0.06, 0.12),
        valve_db=irng.uniform(-2, 2),
        leak_fc=irng.uniform(3000, 6000),
        mount_f=irng.uniform(150, 450),
    )


def _crank_angle(cyc, j, ncyl):
    """Crank position of cylinder j in revolutions after its TDC, in [0, 1)."""
    return (cyc + j / ncyl) % 1.0


def compressor_normal(rng, sp, n):
    """Healthy reciprocating compressor."""
    f = rfreqs(n)
    nc = sp["ncyl"]
    fc, cyc = rotation(rng, n, sp["fm"] / sp["ratio"], 0.02, 0.003)
    load = rng.uniform(0.3, 1.0)
    so = sp["so"] + 0.04 * load   # suction opens after re-expansion
    sc = 0.52                     # suction closes near BDC
    do = 0.80 + 0.10 * load       # discharge opens when pressure exceeds line
    dc = 0.995                    # discharge closes at TDC
    jit = 0.0003 * SR
    ev = {"s": ([], []), "d": ([], [])}
    for j in range(nc):
        for key, ang, a in (("s", so, 1.0), ("s", sc, 0.5),
                            ("d", do, 0.6 + 0.6 * load), ("d", dc, 0.6)):
            idx = crossings(cyc, 1.0, ang - j / nc)
            ev[key][0].append(idx + np.round(rng.normal(0, jit, len(idx))).astype(int))
            ev[key][1].append(a * np.exp(rng.normal(0, 0.15, len(idx))))
    ps = pulse_train(n, np.concatenate(ev["s"][0]), np.concatenate(ev["s"][1]))
    pd = pulse_train(n, np.concatenate(ev["d"][0]), np.concatenate(ev["d"][1]))
    V = (np.fft.rfft(ps) * modal(f, jitter_modes(rng, sp["suction_modes"]))
         + db(sp["valve_db"]) * np.fft.rfft(pd) * modal(f, jitter_modes(rng, sp["discharge_modes"])))
    valves = unit(np.fft.irfft(V, n))
    h = np.arange(1, 17)
    pa = sp["puls_decay"] ** h * (1 + 2 * (h % nc == 0)) * np.exp(rng.normal(0, 0.2, 16))
    puls = unit(tones(rng, cyc, h, pa)) * db(rng.uniform(-4, 0) + 4 * (load - 0.65))
    win = np.zeros(n)
    for j in range(nc):
        a = _crank_angle(cyc, j, nc)
        m = (a > so) & (a < sc)
        win[m] += np.sin(np.pi * (a[m] - so) / (sc - so)) ** 2
    intake = spectral_noise(rng, n, band(f, 300, 3500, 2)) * (win + 0.05)
    motor = tones(rng, cyc * sp["ratio"] * (1 - 0.01 * rng.random()), [1, 2], [1.0, 0.4])
    cool = spectral_noise(rng, n, bump(f, rng.uniform(500, 1200), 1.5))
    x = (valves + puls + db(-8) * unit(intake) + db(-22) * unit(motor)
         + db(rng.uniform(-24, -16)) * mains_hum(rng, n) + db(-16) * cool)
    H = 0.5 + modal(f, jitter_modes(rng, sp["modes"]))
    return fft_filter(x, H), dict(f=f, cyc=cyc, load=load, H=H, puls=puls,
                                  valves=valves, sc=sc, nc=nc)


def compressor_valve_leak(rng, sp, c, n):
    """Leaking valve: hiss while the cylinder is at high pressure."""
    f = c["f"]
    sc = c["sc"]
    win = np.zeros(n)
    for j in range(c["nc"]):
        a = _crank_angle(c["cyc"], j, c["nc"])
        m = a >= sc
        win[m] += ((a[m] - sc) / (1 - sc)) ** 0.75   # flow ~ sqrt(pressure difference)
    hiss = spectral_noise(rng, n, bump(f, sp["leak_fc"] * rng.uniform(0.85, 1.15), 1.0)
                          * band(f, 800, 7800, 2))
    return hiss * (win + 0.1), None


def compressor_piston_knock(rng, sp, c, n):
    """Worn wrist pin / rod bearing: impacts at TDC and BDC force reversal."""
    nc = c["nc"]
    idx_all, amp_all = [], []
    for j in range(nc):
        for ang, a in ((0.0, 1.0), (0.5, rng.uniform(0.2, 0.6))):
            idx = crossings(c["cyc"], 1.0, ang + rng.uniform(-0.01, 0.01) - j / nc)
            idx_all.append(idx)
            amp_all.append(a * (0.5 + c["load"]) * np.exp(rng.normal(0, 0.2, len(idx))))
    x = pulse_train(n, np.concatenate(idx_all), np.concatenate(amp_all))
    return fft_filter(x, modal(c["f"], jitter_modes(rng, sp["knock_modes"], 0.02)) * c["H"]), None


def compressor_loose_mount(rng, sp, c, n):
    """Loosened mount: new low resonance + shifted housing mode, once-per-rev rattle."""
    f = c["f"]
    main = max(sp["modes"], key=lambda m: m[2])
    new = [(sp["mount_f"] * rng.uniform(0.95, 1.05), rng.uniform(8, 20), 1.0),
           (main[0] * rng.uniform(0.75, 0.9), main[1], main[2])]
    rock = fft_filter(c["puls"] + 0.3 * c["valves"], modal(f, new))
    idx = crossings(c["cyc"], 1.0, rng.random())
    amps = np.exp(rng.normal(0, 0.4, len(idx))) * (rng.random(len(idx)) > 0.3)
    rat = fft_filter(pulse_train(n, idx, amps),
                     modal(f, [(rng.uniform(1000, 3000), rng.uniform(30, 60), 1.0)]))
    return unit(rock) + db(rng.uniform(-8, 0)) * unit(rat), None


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------
# fault: (function, (severity_lo_dB, severity_hi_dB))
MACHINES = {
    "pump": (pump_spec, pump_normal, {
        "cavitation": (pump_cavitation, (-22, 2)),
        "bearing_outer": (pump_bearing_outer, (-24, 0)),
        "seal_leak": (pump_seal_leak, (-20, 3))}),
    "fan": (fan_spec, fan_normal, {
        "imbalance": (fan_imbalance, (-20, 3)),
        "belt_squeal": (fan_belt_squeal, (-22, 0)),
        "blade_rub": (fan_blade_rub, (-24, 0))}),
    "gearbox": (gearbox_spec, gearbox_normal, {
        "tooth_damage": (gearbox_tooth_damage, (-24, 0)),
        "bearing_inner": (gearbox_bearing_inner, (-24, 0)),
        "loose_rattle": (gearbox_loose_rattle, (-22, 2))}),
    "compressor": (compressor_spec, compressor_normal, {
        "valve_leak": (compressor_valve_leak, (-20, 3)),
        "piston_knock": (compressor_piston_knock, (-24, 0)),
        "loose_mount": (compressor_loose_mount, (-20, 3))}),
}
PARTIAL_PROB = 0.3


def machine_spec(seed, mtype, mid):
    """Parameters of one machine id: type-shared part + id-specific part."""
    k = IDS.index(mid)
    trng = _rng(seed, mtype, "type-spec")
    irng = _rng(seed, mtype, mid, "id-spec")
    return MACHINES[mtype][0](trng, irng, k)


# --------------------------------------------------------------------------
# factory background
# --------------------------------------------------------------------------
def ev_impact(rng):
    """Distant impact or hammering: a few blows exciting random metal modes."""
    blows = int(rng.integers(1, 6))
    gap = rng.uniform(0.25, 0.9)
    ring = int(rng.uniform(0.15, 0.6) * SR)
    m = int(rng.integers(3, 6))
    fm = np.exp(rng.uniform(np.log(150), np.log(4000), m))[:, None]
    q = rng.uniform(15, 80, m)[:, None]
    a = rng.uniform(0.3, 1.0, m)[:, None]
    tt = np.arange(ring) / SR
    one = (a * np.exp(-np.pi * fm * tt / q) * np.sin(TWO_PI * fm * tt)).sum(0)
    one[:48] += 0.5 * np.abs(one).max() * rng.standard_normal(48) * np.exp(-np.arange(48) / 10)
    L = int(gap * 1.1 * (blows - 1) * SR) + ring + 1
    out = np.zeros(L)
    for b in range(blows):
        s = min(int(b * gap * SR * rng.uniform(0.9, 1.1)), L - ring)
        out[s:s + ring] += one * rng.uniform(0.6, 1.0)
    return out


def ev_babble(rng):
    """Speech-like babble of 1-3 distant talkers (formant-filtered syllables)."""
    dur = rng.uniform(1.0, 4.0)
    L = int(dur * SR)
    out = np.zeros(L)
    for _ in range(int(rng.integers(1, 4))):
        pos = rng.uniform(0, 0.4)
        f0b = rng.uniform(90, 240)
        g = rng.uniform(0.4, 1.0)
        while pos < dur - 0.1:
            s = int(pos * SR)
            ls = min(int(rng.uniform(0.1, 0.3) * SR), L - s)
            if ls < 256:
                break
            tt = np.arange(ls) / SR
            if rng.random() < 0.8:
                f0 = f0b * (1 + rng.uniform(-0.12, 0.12) + rng.uniform(-0.6, 0.6) * tt)
                ph = np.cumsum(f0) / SR + rng.random()
                src = 2 * (ph % 1.0) - 1 + 0.05 * rng.standard_normal(ls)
            else:
                src = 0.5 * rng.standard_normal(ls)
            fr = np.fft.rfftfreq(ls, 1.0 / SR)
            H = modal(fr, [(rng.uniform(300, 850), 6, 1.0), (rng.uniform(850, 2400), 12, 0.6),
                           (rng.uniform(2400, 3300), 20, 0.3)]) * band(fr, 100, 3500, 2)
            seg = np.fft.irfft(np.fft.rfft(src) * H, ls) * np.hanning(ls)
            out[s:s + ls] += g * unit(seg)
            pos += ls / SR + (rng.uniform(0.02, 0.12) if rng.random() < 0.85 else rng.uniform(0.25, 0.6))
    return out


def ev_beep(rng):
    """Reversing beeper of a forklift."""
    L = int(rng.uniform(1.5, 5.0) * SR)
    tt = np.arange(L) / SR
    fb = rng.uniform(900, 1400)
    on = (((tt / rng.uniform(0.7, 1.2)) + rng.random()) % 1.0 < 0.5).astype(float)
    on = np.convolve(on, np.ones(80) / 80, mode="same")
    return (np.sin(TWO_PI * fb * tt) + 0.3 * np.sin(TWO_PI * 3 * fb * tt)) * on


def ev_air(rng):
    """Compressed-air release / pneumatic exhaust."""
    L = int(rng.uniform(0.3, 1.5) * SR)
    tt = np.arange(L) / SR
    fr = np.fft.rfftfreq(L, 1.0 / SR)
    x = spectral_noise(rng, L, band(fr, rng.uniform(600, 1500), 7800, 2))
    return x * (1 - np.exp(-tt / 0.01)) * np.exp(-tt / rng.uniform(0.08, 0.5))


def ev_vehicle(rng):
    """Passing vehicle / forklift engine."""
    dur = rng.uniform(3.0, 8.0)
    L = int(dur * SR)
    tt = np.arange(L) / SR
    fire = rng.uniform(20, 45) * (1 + 0.08 * smooth(rng, L, 0.5))
    h = np.arange(1, 13)
    x = unit(tones(rng, np.cumsum(fire) / SR, h, h ** -0.8 * np.exp(rng.normal(0, 0.3, 12))))
    fr = np.fft.rfftfreq(L, 1.0 / SR)
    x += 0.3 * spectral_noise(rng, L, band(fr, 50, 800, 2))
    return x * np.exp(-0.5 * ((tt - dur / 2) / (dur / 5)) ** 2)


TRANSIENTS = (ev_impact, ev_babble, ev_beep, ev_air, ev_vehicle)


def factory_background(rng, n):
    """Steady factory background (unit RMS) plus unrelated transient events."""
    f = rfreqs(n)
    t = timebase(n)
    mag = (np.maximum(f, 15.0) / 1000.0) ** (-rng.uniform(0.5, 1.8) / 2)
    mag = mag * band(f, rng.uniform(20, 60), rng.uniform(3000, 7500), 2)
    for _ in range(int(rng.integers(1, 4))):
        fc = np.exp(rng.uniform(np.log(80), np.log(4000)))
        mag = mag * db(rng.uniform(-6, 8) * bump(f, fc, rng.uniform(0.4, 1.5)))
    bg = spectral_noise(rng, n, mag) * (1 + rng.uniform(0.02, 0.15) * smooth(rng, n, 0.3))
    if rng.random() < 0.75:   # electrical hum
        hf = MAINS * (1 + rng.normal(0, 5e-4))
        h = np.arange(1, 9)
        bg += db(rng.uniform(-30, -8)) * unit(tones(rng, t * hf, h, rng.uniform(0.05, 1, 8) / h))
    for _ in range(int(rng.integers(0, 3))):   # other machines in the hall
        fd = np.exp(rng.uniform(np.log(30), np.log(300))) * (1 + 0.003 * smooth(rng, n, 0.3))
        h = np.arange(1, 6)
        bg += db(rng.uniform(-28, -12)) * unit(tones(rng, np.cumsum(fd) / SR, h,
                                                      rng.uniform(0.1, 1, 5) / h))
    bg = unit(bg)
    trans = np.zeros(n)
    for _ in range(int(rng.poisson(1.8))):
        ev = TRANSIENTS[int(rng.integers(len(TRANSIENTS)))](rng)[:n]
        L = len(ev)
        s = int(rng.integers(-L // 2, n - 1))
        a, b = max(s, 0), min(s + L, n)
        trans[a:b] += db(rng.uniform(-8, 8)) / rms(ev) * ev[a - s:b - s]
    if trans.any():   # hall reverberation for the distant events
        rt = rng.uniform(0.3, 1.2)
        Lr = int(rt * SR)
        ir = rng.standard_normal(Lr) * np.exp(-6.9 * np.arange(Lr) / Lr)
        ir *= np.sqrt(rng.uniform(0.5, 3.0) / np.sum(ir ** 2))
        ir[0] += 1.0
        trans = fftconvolve(trans, ir)[:n]
    return bg + trans


# --------------------------------------------------------------------------
# clip rendering
# --------------------------------------------------------------------------
def render_clip(rng, mtype, spec, fault, n):
    """Machine (+ optional fault) in background, mic colour, recording gain."""
    _, normal_fn, faults = MACHINES[mtype]
    x, ctx = normal_fn(rng, spec, n)
    if fault:
        fn, (lo, hi) = faults[fault]
        fx, env = fn(rng, spec, ctx, n)
        if env is None and rng.random() < PARTIAL_PROB:   # intermittent fault
            T = n / SR
            env = window_gate(timebase(n), rng.uniform(0, 0.6) * T, rng.uniform(0.25, 0.6) * T, 0.1)
            fx = fx * env
        active = 1.0 if env is None else max(float(np.mean(env > 0.5)), 0.01)
        sev = rng.uniform(lo, hi)
        fx = fx * (rms(x) * db(sev) / (rms(fx) / np.sqrt(active)))
        x = x + fx
    y = unit(x) * db(rng.uniform(0, 10)) + factory_background(rng, n)
    f = rfreqs(n)
    y = fft_filter(y, tilt(f, rng.uniform(-1.0, 1.0)) * band(f, rng.uniform(15, 40), None, 1))
    y += db(-55) * rms(y) * rng.standard_normal(n)   # mic self-noise
    y *= db(TARGET_DBFS + rng.uniform(-3, 3)) / rms(y)
    peak = np.abs(y).max()
    if peak > 0.97:
        y *= 0.97 / peak
    return y


def render(seed, mtype, mid, split, label, index, seconds=10.0):
    """Regenerate one clip alone (identical to the one in the data set)."""
    spec = machine_spec(seed, mtype, mid)
    kinds = list(MACHINES[mtype][2])
    fault = kinds[index % len(kinds)] if label == "anomaly" else ""
    rng = clip_rng(seed, mtype, mid, split, label, index)
    return render_clip(rng, mtype, spec, fault, int(round(seconds * SR))), fault


def generate(out, seed=0, n_train=40, n_test=50, seconds=10.0):
    """Write the whole data set and (last) its manifest; returns clip count."""
    manifest = os.path.join(out, "manifest.csv")
    os.makedirs(out, exist_ok=True)
    if os.path.exists(manifest):
        os.remove(manifest)
    rows = []
    for mtype in TYPES:
        for split in ("train", "test"):
            os.makedirs(os.path.join(out, mtype, split), exist_ok=True)
        for mid in IDS:
            jobs = ([("train", "normal", i) for i in range(n_train)]
                    + [("test", "normal", i) for i in range(n_test)]
                    + [("test", "anomaly", i) for i in range(n_test)])
            for split, label, i in jobs:
                y, fault = render(seed, mtype, mid, split, label, i, seconds)
                rel = f"{mtype}/{split}/{label}_id_{mid:02d}_{i:08d}.wav"
                sf.write(os.path.join(out, rel), y.astype(np.float32), SR, subtype="PCM_16")
                rows.append((rel, mtype, f"{mid:02d}", split, label, fault))
    tmp = manifest + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "machine_type", "machine_id", "split", "label", "fault"])
        w.writerows(rows)
    os.replace(tmp, manifest)
    return len(rows)


def main():
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=40, help="normal train clips per id")
    ap.add_argument("--test", type=int, default=50, help="normal and anomalous test clips per id")
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    t0 = time.time()
    count = generate(a.out, a.seed, a.train, a.test, a.seconds)
    dt = time.time() - t0
    print(f"factory_synth: wrote {count} clips to {os.path.abspath(a.out)} in {dt:.1f} s "
          f"({1000 * dt / max(count, 1):.0f} ms/clip)")


if __name__ == "__main__":
    main()
