#!/usr/bin/env python3
"""Independent synthetic machine-sound anomaly-detection dataset (DCASE 2020 Task 2 layout).

A second, independently designed generator of fan / pump / slider / valve recordings with
physically motivated faults.  It exists only to check whether an anomaly detector developed on
another synthetic corpus generalises: the sound models here were written from scratch and share
no code or parameters with the project's own synthesiser.

    independent_synth.py OUT [--seed N] [--train 40] [--test 50] [--seconds 10]

writes OUT/<type>/train/normal_id_XX_NNNNNNNN.wav, OUT/<type>/test/{normal,anomaly}_id_XX_NNNNNNNN.wav
(16 kHz mono 16-bit PCM) and, last, OUT/manifest.csv (path, machine_type, machine_id, split, label,
fault): a set without it was not finished.

Every clip has its own generator seeded from (seed, type, id, split, label, index), so any clip can
be regenerated alone.  Normal clips vary in operating point, phase, factory background (level,
colour, hum, unrelated transients; machine 0-10 dB above it) and recording level (-26 +-2 dBFS RMS).
Anomalous test clips cycle through the type's fault kinds, each with a per-clip random severity.
"""
from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np
import soundfile as sf
from scipy import signal

SR = 16000
TAU = 2.0 * np.pi
TYPES = ("fan", "pump", "slider", "valve")
SPLITS = ("train", "test")
LABELS = ("normal", "anomaly")
FAULTS = {
    "fan": ("imbalance", "bearing", "contamination"),
    "pump": ("cavitation", "leak", "clogging"),
    "slider": ("rail_damage", "no_lubrication"),
    "valve": ("sticking", "leakage", "irregular"),
}


# ----------------------------------------------------------------------------- building blocks
def db(x):
    """Decibels to amplitude ratio."""
    return 10.0 ** (np.asarray(x, dtype=float) / 20.0)


def rms(x):
    """Root mean square (never zero)."""
    return float(np.sqrt(np.mean(np.square(x)))) + 1e-12


def unit(x):
    """Scale to unit RMS."""
    return x / rms(x)


def wander(rng, n, rate, depth):
    """Smooth random curve with about `rate` random knots per second and std `depth`."""
    k = int(n / SR * rate) + 2
    return np.interp(np.arange(n), np.linspace(0, n - 1, k), rng.standard_normal(k) * depth)


def integ(freq):
    """Phase (radians) of an instantaneous frequency track in Hz."""
    return TAU * np.cumsum(freq) / SR


def noise(rng, n, slope=0.0, peaks=(), floor=1.0, lo=30.0, hi=7800.0):
    """Unit-RMS Gaussian noise: tilt of `slope` dB/octave (re 1 kHz) times `floor`, plus
    Lorentzian resonances (fc, Q, gain) and soft band edges at lo / hi."""
    f = np.fft.rfftfreq(n, 1.0 / SR)
    g = floor * (np.maximum(f, lo) / 1000.0) ** (slope / 6.02)
    for fc, q, gain in peaks:
        g = g + gain / np.sqrt(1.0 + (2.0 * q * (f - fc) / fc) ** 2)
    g = g / (1.0 + (lo / np.maximum(f, 1.0)) ** 4) / (1.0 + (f / hi) ** 8)
    spec = g * (rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size))
    return unit(np.fft.irfft(spec, n))


def jitter(rng, peaks, fsd=0.015, gsd=1.0):
    """Per-clip variation of resonance frequencies / gains (mounting, temperature, mic position)."""
    return [(fc * (1 + rng.normal(0, fsd)), q, g * db(rng.normal(0, gsd))) for fc, q, g in peaks]


def tones(rng, phase, orders, amps_db):
    """Sum of harmonics sin(k * phase + random) with amplitudes given in dB."""
    out = np.zeros_like(phase)
    for k, a in zip(orders, amps_db):
        out += db(a) * np.sin(k * phase + rng.uniform(0, TAU))
    return out


def ring(rng, n, idx, amps, modes, click_ms=0.6):
    """Strike decaying modes [(freq, decay_s, amp)] at sample indices idx (kernel peak = 1)."""
    idx = np.asarray(idx, dtype=int)
    keep = (idx >= 0) & (idx < n)
    train = np.zeros(n)
    np.add.at(train, idx[keep], np.broadcast_to(amps, idx.shape)[keep])
    t = np.arange(int(SR * 5 * max(d for _, d, _ in modes)) + 1) / SR
    k = sum(a * np.exp(-t / d) * np.sin(TAU * f * (1 + rng.normal(0, 0.01)) * t + rng.uniform(0, TAU))
            for f, d, a in modes)
    nb = max(2, int(click_ms * SR / 1000))
    k[:nb] += 0.4 * rng.standard_normal(nb) * np.exp(-np.arange(nb) / (nb / 3))
    return signal.fftconvolve(train, k / np.max(np.abs(k)))[:n]


def crossings(cyc, offset):
    """Sample indices where the (increasing) cycle counter passes `offset` modulo 1."""
    return np.nonzero(np.diff(np.floor(cyc - offset)) > 0)[0] + 1


def add_rel(m, part, lo_db, hi_db, rng):
    """Add `part` at a random level between lo_db and hi_db relative to the RMS of `m`."""
    return m + unit(part) * rms(m) * db(rng.uniform(lo_db, hi_db))


# ----------------------------------------------------------------------------- background
def background(rng, n):
    """Factory background: tilted noise with random humps, mains hum, slow level drift
    (stationary part unit RMS) plus occasional unrelated transients."""
    t = np.arange(n) / SR
    peaks = [(rng.uniform(80, 3000), rng.uniform(0.7, 3), rng.uniform(0, 3)) for _ in range(rng.integers(0, 3))]
    x = noise(rng, n, rng.uniform(-7, -1), peaks) * db(wander(rng, n, 0.5, 1.0))
    mains = 50.0 if rng.random() < 0.8 else 60.0
    x += tones(rng, TAU * mains * t, (1, 2, 3, 6), rng.uniform(-38, -22) + np.array([0, -3, -6, -10]))
    x = unit(x)
    for _ in range(rng.poisson(0.1 * n / SR)):
        kind, at, lev = rng.integers(4), int(rng.integers(0, n)), db(rng.uniform(0, 12))
        if kind == 0:  # metal clank: a dropped tool, a door, a hammer
            modes = [(rng.uniform(400, 5000), rng.uniform(0.02, 0.25), rng.uniform(0.3, 1)) for _ in range(3)]
            x += lev * ring(rng, n, [at], 1.0, modes)
        else:
            d = int(rng.uniform(0.1, 1.0) * SR)
            seg = slice(at, min(n, at + d))
            tt = np.arange(seg.stop - seg.start) / SR
            if kind == 1:  # compressed-air blow-off
                burst = noise(rng, d, 3.0, lo=500.0)[: tt.size] * np.sin(np.pi * tt / (d / SR)) ** 0.5
            elif kind == 2:  # reversing beeper
                burst = np.sin(TAU * rng.uniform(900, 3000) * tt) * (np.sin(TAU * 3 * tt) > 0)
            else:  # low thud / distant impact
                burst = np.sin(TAU * rng.uniform(50, 180) * tt) * np.exp(-tt / rng.uniform(0.05, 0.2))
            x[seg] += lev * burst / max(np.max(np.abs(burst)), 1e-9) * 0.7
    return x


# ----------------------------------------------------------------------------- machines
def fan(rng, p, n, fault):
    """Fan: blade-pass harmonics over blade-modulated aerodynamic broadband, 2x-mains motor hum."""
    f0 = p["rot"] * (1 + rng.uniform(-0.03, 0.03)) * (1 + wander(rng, n, 0.5, 0.003))
    ph = integ(f0) + rng.uniform(0, TAU)
    b = p["blades"]
    air = noise(rng, n, p["slope"], jitter(rng, p["res"])) * db(rng.uniform(-2, 2))
    air *= 1 + 0.06 * np.sin(b * ph + rng.uniform(0, TAU)) + 0.02 * np.sin(ph)
    tone = tones(rng, ph, (1, b, 2 * b, 3 * b, 4 * b), np.r_[-30, p["bpf_db"]] + rng.normal(0, 1.5, 5))
    hum = tones(rng, TAU * 100.0 * np.arange(n) / SR, (1, 2), (p["hum_db"], p["hum_db"] - 6))
    m = air + tone + hum
    if fault == "imbalance":  # once-per-rev force: 1x/2x tones and strong 1x wobble of the flow noise
        m *= 1 + rng.uniform(0.15, 0.4) * np.sin(ph + rng.uniform(0, TAU))
        m = add_rel(m, tones(rng, ph, (1, 2), (0, -6)), -10, -3, rng)
    elif fault == "bearing":  # outer-race defect: impulses at BPFO exciting bearing/housing modes
        cyc = ph / TAU * p["bpfo"] + wander(rng, n, 20, 0.03)
        idx = crossings(cyc, 0.0)
        amps = rng.uniform(0.4, 1.0, idx.size) * (1 + 0.4 * np.sin(ph[idx]))
        m = add_rel(m, ring(rng, n, idx, amps, p["bearing_modes"]), -17, -8, rng)
    elif fault == "contamination":  # uneven deposits: non-blade shaft orders + fluttering turbulence
        orders = rng.choice([k for k in range(1, 2 * b + 1) if k % b], 8, replace=False)
        m = add_rel(m, tones(rng, ph, orders, rng.uniform(-8, 0, 8)), -16, -9, rng)
        turb = noise(rng, n, 0.0, [(1800, 1.0, 3.0)], floor=0.1) * np.abs(1 + wander(rng, n, 8, 0.7))
        m = add_rel(m, turb, -13, -7, rng)
    return m


def pump(rng, p, n, fault):
    """Centrifugal pump: vane-pass pulsation, shaft orders, strong motor hum, pipe-resonant flow noise."""
    f0 = p["rot"] * (1 + rng.uniform(-0.02, 0.02)) * (1 + wander(rng, n, 0.3, 0.002))
    ph = integ(f0) + rng.uniform(0, TAU)
    v = p["vanes"]
    flow = noise(rng, n, p["slope"], jitter(rng, p["res"])) * (1 + wander(rng, n, 1.0, 0.05))
    flow *= db(rng.uniform(-2, 2))
    vpf = tones(rng, ph, (v, 2 * v, 3 * v), np.asarray(p["vpf_db"]) + rng.normal(0, 1.5, 3))
    shaft = tones(rng, ph, (1, 2), (-24, -28))
    hum = tones(rng, TAU * 100.0 * np.arange(n) / SR, (1, 2, 3), p["hum_db"] + np.array([0, -5, -9]))
    if fault == "clogging":  # restricted flow: recirculation surge, stronger vane pulsation, less flow noise
        flow *= db(rng.uniform(-4, -2)) * np.clip(1 + wander(rng, n, 2.0, rng.uniform(0.25, 0.45)), 0.2, None)
        vpf *= db(rng.uniform(4, 8))
    m = flow + vpf + shaft + hum
    if fault == "cavitation":  # vapour-bubble collapses: dense broadband crackle, gated by vane passage
        rate = rng.uniform(300, 1200) / SR * (1 + 0.8 * np.cos(v * ph + rng.uniform(0, TAU)))
        crack = (rng.random(n) < rate) * rng.exponential(1.0, n) ** 1.5
        crack = signal.sosfilt(signal.butter(2, (1200, 7000), "bandpass", fs=SR, output="sos"), crack)
        m = add_rel(m, crack, -14, -5, rng)
    elif fault == "leak":  # jet hiss from a seal / flange leak
        fc = rng.uniform(*p["leak_fc"])
        hiss = noise(rng, n, 0.0, [(fc, rng.uniform(1.5, 3), 1.0)], floor=0.03, lo=800.0)
        m = add_rel(m, hiss * (1 + wander(rng, n, 3, 0.1)), -16, -8, rng)
    return m


def slider(rng, p, n, fault):
    """Linear slide: reciprocating strokes with velocity-following drive whine, rolling noise, end stops."""
    period = p["period"] * (1 + rng.uniform(-0.03, 0.03)) * (1 + wander(rng, n, 0.5, 0.005))
    cyc = np.cumsum(1.0 / period) / SR + rng.uniform(0, 1)
    u, mv = cyc % 1.0, p["move"]
    fwd, ret = u < mv, (u >= 0.5) & (u < 0.5 + mv)
    prog = np.where(fwd, u / mv, np.where(ret, (u - 0.5) / mv, 0.0))
    speed = np.where(fwd | ret, np.sin(np.pi * prog), 0.0)
    phm = integ(p["motor_hz"] * (1 + rng.uniform(-0.03, 0.03)) * speed)
    whine = speed * tones(rng, phm, p["orders"], np.asarray(p["order_db"]) + rng.normal(0, 1.5, len(p["orders"])))
    roll = noise(rng, n, p["slope"], jitter(rng, p["res"])) * speed ** 1.5
    stop_idx = np.r_[crossings(cyc, mv), crossings(cyc, 0.5 + mv)]
    start_idx = np.r_[crossings(cyc, 0.0), crossings(cyc, 0.5)]
    stops = ring(rng, n, stop_idx, p["stop"] * db(rng.normal(0, 1.5, stop_idx.size)), p["stop_modes"])
    stops += ring(rng, n, start_idx, 0.3 * p["stop"] * db(rng.normal(0, 1.5, start_idx.size)), p["stop_modes"])
    m = whine + roll + stops
    if p["pwm_hz"]:
        m += tones(rng, TAU * p["pwm_hz"] * np.arange(n) / SR, (1,), (p["pwm_db"] + rng.normal(0, 1),))
    if fault == "rail_damage":  # dent / spall at one rail position: knock each pass (two carriage blocks)
        uf = np.arccos(1 - 2 * rng.uniform(0.2, 0.8)) / np.pi
        idx = np.r_[crossings(cyc, uf * mv), crossings(cyc, 0.5 + (1 - uf) * mv)]
        idx = np.r_[idx, idx + int(rng.uniform(0.02, 0.06) * SR)]
        amps = p["stop"] * np.sin(np.pi * uf) * db(rng.uniform(-4, 2)) * rng.uniform(0.6, 1.0, idx.size)
        m = m + ring(rng, n, idx, amps, p["rail_modes"])
    elif fault == "no_lubrication":  # stick-slip squeal while moving + rougher rolling noise
        fs = rng.uniform(*p["squeal"]) * (1 + 0.01 * wander(rng, n, 20, 1.0))
        env = speed ** 0.7 * np.clip(0.6 + wander(rng, n, 3, 0.6), 0, 1)
        squeal = env * tones(rng, integ(fs), (1, 2), (0, -10))
        m = m + roll * rng.uniform(0.4, 0.8) * np.abs(wander(rng, n, 80, 1.0))
        m = add_rel(m, squeal, -17, -8, rng)
    return m


def valve(rng, p, n, fault):
    """Solenoid valve: open/close clicks in a fixed rhythm, flow hiss while open, optional coil buzz."""
    dur = n / SR
    T = p["period"] * (1 + rng.uniform(-0.03, 0.03))
    ncyc = int(dur / (0.7 * T)) + 3
    per = T * (rng.uniform(0.7, 1.5, ncyc) if fault == "irregular" else 1 + rng.normal(0, 0.006, ncyc))
    starts = np.cumsum(per) - T - rng.uniform(0, T)
    op = starts[:, None] + np.asarray(p["opens"])[None, :] + rng.normal(0, 0.003, (ncyc, len(p["opens"])))
    cl = starts[:, None] + np.asarray(p["closes"])[None, :] + rng.normal(0, 0.003, op.shape)
    ticks = np.zeros(0)
    if fault == "irregular":  # erratic controller/pilot: varying periods and on-times, missed and extra strokes
        cl = op + (cl - op) * rng.uniform(0.6, 1.4, op.shape)
        keep = rng.random(ncyc) > 0.15
        op, cl, starts, per = op[keep], cl[keep], starts[keep], per[keep]
        extra = rng.random(starts.size) < rng.uniform(0.2, 0.4)
        xo = starts[extra] + per[extra] * rng.uniform(0.5, 0.75, extra.sum())
        op, cl = np.r_[op.ravel(), xo], np.r_[cl.ravel(), xo + rng.uniform(0.05, 0.15, xo.size)]
    amp_o = db(rng.normal(0, 0.8, op.shape))
    if fault == "sticking":  # armature/spool sticks: late, harder opening with a faint coil tick, late closing
        stuck = rng.random(op.shape) < rng.uniform(0.5, 1.0)
        delay = stuck * np.minimum(rng.uniform(0.025, 0.12, op.shape), 0.6 * (cl - op))
        ticks, op = op[stuck], op + delay
        amp_o = amp_o * np.where(stuck, rng.uniform(1.1, 1.5, op.shape), 1.0)
        cl = cl + (rng.random(cl.shape) < 0.5) * rng.uniform(0.01, 0.05, cl.shape)
    op, cl, amp_o = op.ravel(), cl.ravel(), amp_o.ravel()
    oi, ci = np.round(op * SR).astype(int), np.round(cl * SR).astype(int)
    cnt = np.zeros(n + 1)
    np.add.at(cnt, np.clip(oi, 0, n), 1.0)
    np.add.at(cnt, np.clip(ci, 0, n), -1.0)
    gate = (np.cumsum(cnt)[:n] > 0.5).astype(float)
    a = np.exp(-1.0 / (SR * 0.012))
    gsm = signal.lfilter([1 - a], [1, -a], gate)
    flow = noise(rng, n, p["flow_slope"], jitter(rng, p["flow_res"])) * gsm * db(p["flow_db"] + rng.uniform(-2, 2))
    m = flow + ring(rng, n, oi, amp_o, p["open_modes"])
    m += ring(rng, n, ci, p["close_rel"] * db(rng.normal(0, 0.8, ci.size)), p["close_modes"])
    if p["buzz_db"] is not None:  # AC coil hum while energised
        m += gate * tones(rng, TAU * 100.0 * np.arange(n) / SR, (1, 2, 3), p["buzz_db"] + np.array([0, -4, -8]))
    if ticks.size:
        m += ring(rng, n, np.round(ticks * SR).astype(int), rng.uniform(0.12, 0.25), p["close_modes"])
    if fault == "leakage":  # worn seat: narrow-band whistle/hiss while nominally closed
        fc = p["leak_fc"] * rng.uniform(0.85, 1.15)
        hiss = noise(rng, n, 0.0, [(fc, rng.uniform(3, 6), 1.0)], floor=0.02, lo=500.0)
        m = add_rel(m, hiss * (1 - 0.8 * gsm), -14, -6, rng)
    return m


GEN = {"fan": fan, "pump": pump, "slider": slider, "valve": valve}
SPECS = {
    "fan": {  # id_00: large slow 5-blade axial fan; id_02: small fast 12-blade centrifugal blower
        0: dict(rot=24.4, blades=5, slope=-4.5, res=[(640, 4, 1.5), (1900, 6, 1.0), (3400, 8, 0.5)],
                bpf_db=[-9, -15, -21, -27], hum_db=-30, bpfo=3.58, bearing_modes=[(3150, 0.0012, 1.0), (4800, 0.0008, 0.6)]),
        2: dict(rot=47.5, blades=12, slope=-2.5, res=[(900, 3, 1.2), (2300, 5, 1.0), (4200, 7, 0.6)],
                bpf_db=[-6, -12, -18, -24], hum_db=-26, bpfo=3.1, bearing_modes=[(3700, 0.001, 1.0), (6200, 0.0006, 0.5)]),
    },
    "pump": {  # id_00: 2-pole motor, 5-vane impeller; id_02: 4-pole motor, 7-vane impeller, darker pipework
        0: dict(rot=49.1, vanes=5, slope=-5.0, res=[(190, 3, 1.5), (560, 4, 1.2), (1450, 6, 0.6)],
                vpf_db=[-8, -14, -20], hum_db=-16, leak_fc=(2500, 4500)),
        2: dict(rot=24.6, vanes=7, slope=-6.0, res=[(270, 2.5, 1.6), (880, 5, 1.0), (2200, 6, 0.5)],
                vpf_db=[-10, -13, -19], hum_db=-20, leak_fc=(3500, 6000)),
    },
    "slider": {  # id_00: fast ball-screw slide with servo PWM tone; id_02: slow belt-driven slide, heavy stops
        0: dict(period=1.1, move=0.32, motor_hz=50.0, orders=(1, 2, 4, 8), order_db=(-20, -24, -14, -22),
                slope=-2.0, res=[(950, 5, 1.0), (2500, 6, 0.8)], stop=3.0, pwm_hz=4000.0, pwm_db=-34,
                stop_modes=[(1400, 0.012, 1.0), (3300, 0.006, 0.6), (5200, 0.003, 0.4)],
                rail_modes=[(2900, 0.008, 1.0), (4600, 0.004, 0.7), (6400, 0.003, 0.4)], squeal=(2600, 3600)),
        2: dict(period=2.3, move=0.38, motor_hz=30.0, orders=(1, 3, 6, 12), order_db=(-22, -18, -20, -16),
                slope=-4.0, res=[(680, 4, 1.2), (1750, 5, 1.0), (3900, 8, 0.5)], stop=4.0, pwm_hz=None, pwm_db=0,
                stop_modes=[(900, 0.02, 1.0), (2100, 0.01, 0.7), (4400, 0.004, 0.3)],
                rail_modes=[(2300, 0.01, 1.0), (3800, 0.006, 0.6), (5900, 0.004, 0.4)], squeal=(1800, 3000)),
    },
    "valve": {  # id_00: quick liquid valve, one pulse per 0.8 s; id_02: pneumatic valve, double pulse per 2 s
        0: dict(period=0.8, opens=[0.0], closes=[0.28], close_rel=0.7, flow_db=-17, flow_slope=-3.0,
                flow_res=[(1200, 1.5, 2.0)], buzz_db=None, leak_fc=4500.0,
                open_modes=[(2300, 0.006, 1.0), (4100, 0.004, 0.7), (6200, 0.003, 0.5)],
                close_modes=[(1800, 0.005, 1.0), (3500, 0.003, 0.6)]),
        2: dict(period=2.0, opens=[0.0, 0.45], closes=[0.16, 0.95], close_rel=0.9, flow_db=-16, flow_slope=0.0,
                flow_res=[(3000, 1.2, 2.5)], buzz_db=-34, leak_fc=3200.0,
                open_modes=[(1250, 0.008, 1.0), (2700, 0.005, 0.8), (5100, 0.003, 0.4)],
                close_modes=[(1000, 0.01, 1.0), (2300, 0.006, 0.6)]),
    },
}


def make_clip(seed, mtype, mid, split, label, index, seconds):
    """Synthesise one clip; returns (float32 samples, fault name or '')."""
    ss = np.random.SeedSequence([seed, TYPES.index(mtype), mid, SPLITS.index(split), LABELS.index(label), index])
    rng = np.random.default_rng(ss)
    n = int(round(seconds * SR))
    fault = FAULTS[mtype][index % len(FAULTS[mtype])] if label == "anomaly" else ""
    m = unit(GEN[mtype](rng, SPECS[mtype][mid], n, fault or None))
    x = m + background(rng, n) * db(-rng.uniform(0, 10))
    x = unit(x) * db(-26 + rng.uniform(-2, 2))
    peak = np.max(np.abs(x))
    if peak > 0.97:
        x *= 0.97 / peak
    return x.astype(np.float32), fault


def main():
    """Command-line entry point: write the whole dataset and its manifest."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=40, help="normal training clips per id")
    ap.add_argument("--test", type=int, default=50, help="normal and anomalous test clips per id (each)")
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    t0, rows = time.time(), []
    for mtype in TYPES:
        for mid in sorted(SPECS[mtype]):
            for split, label, count in (("train", "normal", a.train), ("test", "normal", a.test), ("test", "anomaly", a.test)):
                os.makedirs(os.path.join(a.out, mtype, split), exist_ok=True)
                for i in range(count):
                    x, fault = make_clip(a.seed, mtype, mid, split, label, i, a.seconds)
                    rel = f"{mtype}/{split}/{label}_id_{mid:02d}_{i:08d}.wav"
                    sf.write(os.path.join(a.out, rel), x, SR, subtype="PCM_16")
                    rows.append((rel, mtype, f"id_{mid:02d}", split, label, fault))
    # Written last and renamed into place: a manifest means the set is complete.
    tmp = os.path.join(a.out, "manifest.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("path", "machine_type", "machine_id", "split", "label", "fault"))
        w.writerows(rows)
    os.replace(tmp, os.path.join(a.out, "manifest.csv"))
    print(f"wrote {len(rows)} clips to {a.out} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
