"""Synthetic machine sounds in the DCASE2020 Task 2 layout.

Each machine type is a small physical model (rotating parts with harmonics, resonances,
strokes, solenoid clicks, belts) whose parameters differ per machine id and wobble per
clip. Faults are added on top of the normal sound with a ``severity`` gain, and every clip
is buried in factory background noise at a random SNR (MIMII's 0-6 dB by default).

Determinism: every clip draws from its own ``numpy.random.Generator`` seeded by
``(seed, type, id, split, label, index)``, so the files do not depend on worker scheduling.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import signal

SR = 16000

MACHINE_IDS = {
    "ToyCar": ["id_01", "id_02", "id_03", "id_04"],
    "ToyConveyor": ["id_01", "id_02", "id_03", "id_04"],
    "fan": ["id_00", "id_02", "id_04", "id_06"],
    "pump": ["id_00", "id_02", "id_04", "id_06"],
    "slider": ["id_00", "id_02", "id_04", "id_06"],
    "valve": ["id_00", "id_02", "id_04", "id_06"],
}
MACHINE_TYPES = tuple(MACHINE_IDS)


# ----------------------------------------------------------------------------------------
# Signal building blocks
# ----------------------------------------------------------------------------------------


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x)) + 1e-12)


def smooth_noise(n: int, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    """Slowly varying unit-std noise: random points every 1/rate_hz s, interpolated."""
    k = max(int(n / SR * rate_hz) + 2, 2)
    pts = rng.standard_normal(k)
    return np.interp(np.linspace(0, k - 1, n), np.arange(k), pts)


def rotation_phase(f0: float, n: int, rng: np.random.Generator, wobble: float, wobble_rate: float = 0.5) -> np.ndarray:
    """Phase (radians) of a shaft turning at ``f0`` Hz with slow relative speed wobble."""
    f = f0 * (1.0 + wobble * smooth_noise(n, rng, wobble_rate))
    return 2 * np.pi * np.cumsum(f) / SR


def harmonic_series(phase: np.ndarray, amps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sum of ``amps[k] * sin((k+1) * phase + random offset)``."""
    # Powers of one complex exponential instead of one sin() per harmonic (~10x faster).
    z = np.exp(1j * phase)
    zk = np.ones_like(z)
    out = np.zeros_like(phase)
    for a in amps:
        zk *= z
        offset = rng.uniform(0, 2 * np.pi)
        if a > 0:
            out += a * (zk * np.exp(1j * offset)).imag
    return out


def band_noise(n: int, rng: np.random.Generator, lo: float, hi: float, order: int = 2) -> np.ndarray:
    """White noise band-passed to [lo, hi] Hz (Butterworth), unit RMS."""
    hi = min(hi, SR / 2 * 0.98)
    sos = signal.butter(order, [lo, hi], btype="bandpass", fs=SR, output="sos")
    x = signal.sosfilt(sos, rng.standard_normal(n))
    return x / _rms(x)


def resonator(x: np.ndarray, freq: float, q: float) -> np.ndarray:
    """Second-order resonance (peaking band-pass) at ``freq`` Hz with quality ``q``."""
    b, a = signal.iirpeak(min(freq, SR / 2 * 0.95), q, fs=SR)
    return signal.lfilter(b, a, x)


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (1 = pink, 2 = brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    spec /= f ** (exponent / 2)
    x = np.fft.irfft(spec, n)
    return x / _rms(x)


def impacts(times: np.ndarray, n: int, rng: np.random.Generator, freq: float, q: float, amp_jitter: float = 0.2) -> np.ndarray:
    """Short resonant knocks at ``times`` (seconds): impulses ringing through a resonator."""
    x = np.zeros(n)
    idx = (np.asarray(times) * SR).astype(int)
    idx = idx[(idx >= 0) & (idx < n)]
    x[idx] = 1.0 + amp_jitter * rng.standard_normal(idx.size)
    return resonator(x, freq, q)


def periodic_times(period: float, n: int, rng: np.random.Generator, jitter: float = 0.0, start: float | None = None) -> np.ndarray:
    dur = n / SR
    t0 = rng.uniform(0, period) if start is None else start
    t = np.arange(t0, dur, period)
    return t + jitter * period * rng.standard_normal(t.size)


# ----------------------------------------------------------------------------------------
# Machine models: normal sound + fault kinds
# ----------------------------------------------------------------------------------------


@dataclass
class MachineModel:
    """A machine type: how to draw an id's parameters, its normal sound, and its faults."""

    draw_params: Callable[[np.random.Generator], dict]
    normal: Callable[[dict, int, np.random.Generator], dict]
    faults: dict[str, Callable[[dict, dict, int, np.random.Generator, float], None]] = field(default_factory=dict)


# Each ``normal`` returns a dict of named components (arrays) plus any per-clip state the
# faults need; each fault edits that dict in place. Components are summed at the end.


def _fan_params(rng):
    return dict(
        shaft=rng.uniform(14, 26), blades=int(rng.integers(3, 8)),
        amps=np.exp(-np.arange(8) * rng.uniform(0.3, 0.7)),
        air_lo=rng.uniform(150, 400), air_hi=rng.uniform(3000, 6000), air_res=rng.uniform(700, 2500),
        bearing_res=rng.uniform(3000, 6000),
    )


def _fan_normal(p, n, rng):
    shaft = p["shaft"] * (1 + 0.015 * rng.standard_normal())
    ph = rotation_phase(shaft, n, rng, wobble=0.004)
    tonal = 0.5 * harmonic_series(ph, p["amps"], rng)
    bpf = harmonic_series(ph * p["blades"], np.array([1.0, 0.5, 0.25]), rng)
    air = band_noise(n, rng, p["air_lo"], p["air_hi"])
    air = air + 0.6 * resonator(air, p["air_res"], 4) / 2
    air *= 1 + 0.3 * np.sin(ph * p["blades"])
    return dict(tonal=tonal, bpf=0.7 * bpf, air=1.2 * air, _phase=ph, _shaft=shaft)


def _fan_imbalance(p, c, n, rng, sev):
    ph = c["_phase"]
    c["imbalance"] = 0.5 * sev * np.sin(ph + rng.uniform(0, 6.3))
    c["air"] = c["air"] * (1 + 0.25 * sev * np.sin(ph))


def _fan_bearing(p, c, n, rng, sev):
    bpfo = c["_shaft"] * rng.uniform(3.0, 4.2)
    t = periodic_times(1 / bpfo, n, rng, jitter=0.02)
    c["bearing"] = 0.35 * sev * impacts(t, n, rng, p["bearing_res"], 12)


def _fan_rubbing(p, c, n, rng, sev):
    ph = c["_phase"]
    env = np.clip(np.sin(ph + rng.uniform(0, 6.3)), 0, 1) ** 8  # once per revolution
    level = smooth_noise(n, rng, 0.4)
    gate = level > 0.0  # rubs come and go
    if not gate.any():  # in ~2 % of clips the level stays below 0: rub in its upper half, not never
        gate = level >= np.median(level)
    c["rubbing"] = 0.6 * sev * band_noise(n, rng, 1500, 7000) * env * gate


def _pump_params(rng):
    return dict(
        motor=rng.uniform(23, 29.5), vanes=int(rng.integers(5, 9)), pipe_res=rng.uniform(300, 1200),
        flow_lo=rng.uniform(80, 200), flow_hi=rng.uniform(1500, 3500),
    )


def _pump_normal(p, n, rng):
    motor = p["motor"] * (1 + 0.01 * rng.standard_normal())
    ph = rotation_phase(motor, n, rng, wobble=0.003)
    hum = harmonic_series(ph, np.array([0.4, 1.0, 0.3, 0.5, 0.15, 0.2]), rng)
    vane = harmonic_series(ph * p["vanes"], np.array([1.0, 0.4]), rng)
    flow = band_noise(n, rng, p["flow_lo"], p["flow_hi"])
    flow = flow + resonator(flow, p["pipe_res"], 6) / 3
    load = 1 + 0.15 * smooth_noise(n, rng, 0.2)
    return dict(hum=0.5 * hum, vane=0.6 * vane * load, flow=flow * load, _phase=ph)


def _pump_cavitation(p, c, n, rng, sev):
    rate = 60 + 120 * rng.random()
    t = np.sort(rng.uniform(0, n / SR, int(rate * n / SR)))
    crackle = impacts(t, n, rng, rng.uniform(2500, 5000), 3, amp_jitter=0.8)
    c["cavitation"] = 0.25 * sev * crackle / _rms(crackle) * _rms(c["flow"]) * 0.5


def _pump_leak(p, c, n, rng, sev):
    c["leak"] = 0.12 * sev * band_noise(n, rng, 3500, 7500) * (1 + 0.3 * smooth_noise(n, rng, 2))


def _pump_clog(p, c, n, rng, sev):
    ph = c["_phase"]
    c["vane"] = c["vane"] * (1 + 0.5 * sev * np.clip(np.sin(ph * p["vanes"] / 2), 0, 1))
    c["flow"] = c["flow"] * (1 - 0.2 * min(sev, 1.0))


def _slider_params(rng):
    return dict(
        period=rng.uniform(1.2, 2.6), duty=rng.uniform(0.55, 0.8), fric_lo=rng.uniform(200, 800),
        fric_hi=rng.uniform(2500, 5000), motor=rng.uniform(90, 160), stop_res=rng.uniform(1200, 3500),
    )


def _slider_motion(p, n, rng, jitter=0.01):
    """Velocity envelope (0..1) of back-and-forth strokes and the stroke end times."""
    t = np.arange(n) / SR
    period = p["period"] * (1 + jitter * rng.standard_normal())
    phase = (t / period + rng.random()) % 1.0
    half = 0.5
    move = p["duty"] * half
    pos_in_half = phase % half
    vel = np.where(pos_in_half < move, np.sin(np.pi * pos_in_half / move), 0.0)
    ends = t[1:][(pos_in_half[1:] >= move) & (pos_in_half[:-1] < move)]
    return vel, ends


def _slider_normal(p, n, rng):
    vel, ends = _slider_motion(p, n, rng)
    fric = band_noise(n, rng, p["fric_lo"], p["fric_hi"]) * vel
    ph = 2 * np.pi * np.cumsum(p["motor"] * (0.3 + 0.7 * vel)) / SR
    motor = harmonic_series(ph, np.array([1.0, 0.6, 0.3, 0.2]), rng) * (0.3 + 0.7 * vel)
    stops = impacts(ends, n, rng, p["stop_res"], 8)
    stops = stops / (np.abs(stops).max() + 1e-9)
    return dict(fric=fric, motor=0.4 * motor, stops=0.8 * stops, _vel=vel)


def _slider_rail(p, c, n, rng, sev):
    vel = c["_vel"]
    t = np.sort(rng.uniform(0, n / SR, int(rng.uniform(2, 5) * n / SR)))
    knocks = impacts(t, n, rng, rng.uniform(2000, 5000), 10)
    c["rail"] = 0.8 * sev * knocks / (np.abs(knocks).max() + 1e-9) * (vel > 0.2)


def _slider_dry(p, c, n, rng, sev):
    vel = c["_vel"]
    f = rng.uniform(1500, 3200) * (1 + 0.02 * np.sin(2 * np.pi * 6 * np.arange(n) / SR))
    squeal = np.sin(2 * np.pi * np.cumsum(f) / SR) * vel ** 2 * (smooth_noise(n, rng, 1.0) > -0.3)
    c["squeal"] = 0.35 * sev * squeal


def _slider_stick_slip(p, c, n, rng, sev):
    jerk = 1 + 0.9 * min(sev, 1.2) * np.sign(np.sin(2 * np.pi * rng.uniform(8, 14) * np.arange(n) / SR))
    c["fric"] = c["fric"] * jerk


def _valve_params(rng):
    k = int(rng.integers(2, 5))
    return dict(
        pattern=rng.uniform(0.15, 0.9, size=2 * k), click_res=rng.uniform(1500, 4500),
        click_q=rng.uniform(5, 15), hiss_lo=rng.uniform(1000, 2500), pump=rng.uniform(40, 80),
    )


def _valve_events(p, n, rng, jitter=0.02):
    """Open/close times from the id's repeating rhythm; returns (times, is_open array)."""
    dur = n / SR
    times, t = [], -rng.uniform(0, p["pattern"].sum())
    i = 0
    while t < dur:
        times.append(t)
        t += p["pattern"][i % p["pattern"].size] * (1 + jitter * rng.standard_normal())
        i += 1
    times = np.array(times)
    is_open = np.zeros(n)
    for a, b in zip(times[0::2], times[1::2]):
        is_open[max(int(a * SR), 0): max(int(b * SR), 0)] = 1.0
    return times[times >= 0], is_open


def _valve_normal(p, n, rng):
    times, is_open = _valve_events(p, n, rng)
    clicks = impacts(times, n, rng, p["click_res"], p["click_q"])
    clicks /= np.abs(clicks).max() + 1e-9
    hiss = band_noise(n, rng, p["hiss_lo"], 7000) * signal.lfilter([0.01], [1, -0.99], is_open)
    ph = rotation_phase(p["pump"], n, rng, 0.003)
    pump = harmonic_series(ph, np.array([1.0, 0.5, 0.3]), rng)
    return dict(clicks=clicks, hiss=0.6 * hiss, pump=0.25 * pump, _times=times, _open=is_open)


def _valve_missing(p, c, n, rng, sev):
    times = c["_times"]
    keep = rng.random(times.size) > min(0.6 * sev, 0.95)
    clicks = impacts(times[keep], n, rng, p["click_res"], p["click_q"])
    c["clicks"] = clicks / (np.abs(clicks).max() + 1e-9)


def _valve_chatter(p, c, n, rng, sev):
    times = c["_times"]
    extra = times[rng.random(times.size) < min(0.7 * sev, 1.0)] + rng.uniform(0.02, 0.08)
    ch = impacts(extra, n, rng, p["click_res"] * rng.uniform(0.9, 1.1), p["click_q"])
    c["chatter"] = 0.8 * ch / (np.abs(ch).max() + 1e-9)


def _valve_leak(p, c, n, rng, sev):
    closed = 1 - signal.lfilter([0.01], [1, -0.99], c["_open"])
    c["leak"] = 0.3 * sev * band_noise(n, rng, p["hiss_lo"], 7000) * closed


def _toycar_params(rng):
    return dict(
        motor=rng.uniform(180, 420), ratio=rng.uniform(8, 16), teeth=int(rng.integers(10, 20)),
        road_lo=rng.uniform(100, 300), road_hi=rng.uniform(2000, 4000), body_res=rng.uniform(600, 1800),
    )


def _toycar_normal(p, n, rng):
    motor = p["motor"] * (1 + 0.02 * rng.standard_normal())
    ph = rotation_phase(motor, n, rng, wobble=0.008, wobble_rate=1.0)
    whine = harmonic_series(ph, np.array([1.0, 0.5, 0.4, 0.2, 0.15]), rng)
    wheel_ph = ph / p["ratio"]
    gear = harmonic_series(wheel_ph * p["teeth"], np.array([1.0, 0.3]), rng)
    road = band_noise(n, rng, p["road_lo"], p["road_hi"])
    road = road + resonator(road, p["body_res"], 5) / 3
    return dict(whine=0.4 * whine, gear=0.4 * gear, road=road, _wheel=wheel_ph, _motor=motor)


def _toycar_gear(p, c, n, rng, sev):
    wheel_hz = c["_motor"] / p["ratio"]
    t = periodic_times(1 / wheel_hz, n, rng, jitter=0.01)
    k = impacts(t, n, rng, rng.uniform(2000, 4500), 8)
    c["gear_damage"] = 0.7 * sev * k / (np.abs(k).max() + 1e-9)


def _toycar_shaft(p, c, n, rng, sev):
    c["road"] = c["road"] * (1 + 0.6 * min(sev, 1.5) * np.sin(c["_wheel"]))
    c["whine"] = c["whine"] * (1 + 0.4 * min(sev, 1.5) * np.sin(c["_wheel"] + 1))


def _toycar_tire(p, c, n, rng, sev):
    c["tire"] = 0.35 * sev * band_noise(n, rng, 4000, 7800) * (np.sin(c["_wheel"]) > 0.7)


def _conveyor_params(rng):
    return dict(
        motor=rng.uniform(45, 75), joint_period=rng.uniform(0.6, 1.6), roller=rng.uniform(12, 30),
        thump_res=rng.uniform(150, 500), belt_lo=rng.uniform(100, 300),
    )


def _conveyor_normal(p, n, rng):
    ph = rotation_phase(p["motor"] * (1 + 0.01 * rng.standard_normal()), n, rng, 0.004)
    motor = harmonic_series(ph, np.array([1.0, 0.7, 0.4, 0.3, 0.2, 0.1]), rng)
    thumps = impacts(periodic_times(p["joint_period"], n, rng, jitter=0.01), n, rng, p["thump_res"], 3)
    thumps /= np.abs(thumps).max() + 1e-9
    belt = band_noise(n, rng, p["belt_lo"], 2500)
    roller_ph = rotation_phase(p["roller"], n, rng, 0.01)
    belt *= 1 + 0.2 * np.sin(roller_ph)
    return dict(motor=0.4 * motor, thumps=0.7 * thumps, belt=belt, _roller=roller_ph)


def _conveyor_belt_damage(p, c, n, rng, sev):
    t = periodic_times(p["joint_period"] * rng.uniform(0.3, 0.7), n, rng, jitter=0.05)
    k = impacts(t, n, rng, p["thump_res"] * rng.uniform(1.5, 3.0), 4)
    c["damage"] = 0.6 * sev * k / (np.abs(k).max() + 1e-9)


def _conveyor_roller(p, c, n, rng, sev):
    t = periodic_times(2 * np.pi / (np.mean(np.diff(c["_roller"])) * SR) / 3.3, n, rng, jitter=0.03)
    k = impacts(t, n, rng, rng.uniform(3000, 6000), 15)
    c["roller"] = 0.3 * sev * k / (np.abs(k).max() + 1e-9)


def _conveyor_overload(p, c, n, rng, sev):
    c["motor"] = c["motor"] * (1 + 0.8 * min(sev, 1.5))
    c["belt"] = c["belt"] * (1 - 0.2 * min(sev, 1.0))


MODELS: dict[str, MachineModel] = {
    "fan": MachineModel(_fan_params, _fan_normal, {"imbalance": _fan_imbalance, "bearing": _fan_bearing, "rubbing": _fan_rubbing}),
    "pump": MachineModel(_pump_params, _pump_normal, {"cavitation": _pump_cavitation, "leak": _pump_leak, "clogging": _pump_clog}),
    "slider": MachineModel(_slider_params, _slider_normal, {"rail_damage": _slider_rail, "no_grease": _slider_dry, "stick_slip": _slider_stick_slip}),
    "valve": MachineModel(_valve_params, _valve_normal, {"missing_clicks": _valve_missing, "chatter": _valve_chatter, "leak": _valve_leak}),
    "ToyCar": MachineModel(_toycar_params, _toycar_normal, {"gear_damage": _toycar_gear, "bent_shaft": _toycar_shaft, "tire_damage": _toycar_tire}),
    "ToyConveyor": MachineModel(_conveyor_params, _conveyor_normal, {"belt_damage": _conveyor_belt_damage, "roller_bearing": _conveyor_roller, "overload": _conveyor_overload}),
}


# ----------------------------------------------------------------------------------------
# Background and mixing
# ----------------------------------------------------------------------------------------


def factory_background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Factory hall noise: coloured noise, mains hum, distant machines and knocks. Unit RMS."""
    bg = coloured_noise(n, rng, rng.uniform(0.8, 1.6))
    mains = rng.choice([50.0, 60.0])
    hum_ph = rotation_phase(mains, n, rng, 0.0005)
    bg += rng.uniform(0.1, 0.6) * harmonic_series(hum_ph, rng.uniform(0, 1, 4), rng)
    # another machine somewhere in the hall
    other = rotation_phase(rng.uniform(20, 120), n, rng, 0.01)
    bg += rng.uniform(0.0, 0.5) * harmonic_series(other, rng.uniform(0, 1, 5), rng) * (1 + 0.5 * smooth_noise(n, rng, 0.3))
    # occasional distant knocks and voices-band rumble
    t = np.sort(rng.uniform(0, n / SR, rng.poisson(3)))
    knocks = impacts(t, n, rng, rng.uniform(200, 3000), 4)
    bg += rng.uniform(0, 3) * knocks / (np.abs(knocks).max() + 1e-9) * _rms(bg)
    bg += rng.uniform(0, 0.6) * band_noise(n, rng, 300, 3000) * np.clip(smooth_noise(n, rng, 0.5), 0, None)
    return bg / _rms(bg)


_ANTI_ALIAS = signal.butter(8, 7000, btype="lowpass", fs=SR, output="sos")


@dataclass(frozen=True)
class SynthConfig:
    """What ``mtad-synth`` writes; defaults make the demo set (~1000 clips)."""

    types: tuple[str, ...] = MACHINE_TYPES
    ids: int = 3
    train: int = 40
    test: int = 10  # normal and anomalous clips per id each
    seconds: float = 10.0
    seed: int = 0
    severity: float = 1.0
    snr_db: tuple[float, float] = (0.0, 6.0)
    val: int = 0  # labelled validation clips per id, normal and anomalous each, in <type>/val/ (mtad-export's accuracy control)


def _seed_for(*parts) -> np.random.SeedSequence:
    # Hash names so seeds do not depend on list order or Python's randomised str hash.
    words = [int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:4], "little") for p in parts]
    return np.random.SeedSequence(words)


def machine_params(cfg: SynthConfig, machine_type: str, machine_id: str) -> dict:
    rng = np.random.default_rng(_seed_for(cfg.seed, machine_type, machine_id, "params"))
    return MODELS[machine_type].draw_params(rng)


def render_clip(cfg: SynthConfig, machine_type: str, machine_id: str, split: str, fault: str | None, index: int) -> np.ndarray:
    """One clip as float32 in [-1, 1]; ``fault`` None means normal."""
    return render_with_levels(cfg, machine_type, machine_id, split, fault, index)[0]


@dataclass
class _ClipParts:
    machine: np.ndarray  # the machine's sound with its fault, unit RMS
    change: np.ndarray | None  # what the fault changed in it, on the same scale (None: normal clip)
    fault_db: float | None  # that change's level against ``machine``
    background: np.ndarray  # factory background, already at the clip's SNR
    snr_db: float
    rng: np.random.Generator  # the clip's generator, for what is drawn after mixing


def _render_parts(cfg: SynthConfig, machine_type: str, machine_id: str, split: str, fault: str | None, index: int) -> _ClipParts:
    model = MODELS[machine_type]
    params = machine_params(cfg, machine_type, machine_id)
    rng = np.random.default_rng(_seed_for(cfg.seed, machine_type, machine_id, split, fault or "normal", index))
    n = int(round(cfg.seconds * SR))
    comps = model.normal(params, n, rng)
    change = fault_db = None
    if fault is not None:
        before = sum(v for k, v in comps.items() if not k.startswith("_"))
        model.faults[fault](params, comps, n, rng, cfg.severity)
    machine = sum(v for k, v in comps.items() if not k.startswith("_"))
    scale = _rms(machine)
    if fault is not None:
        change = machine - before
        fault_db = float(20 * np.log10(_rms(change) / scale))
        change = change / scale
    machine = machine / scale
    snr = rng.uniform(*cfg.snr_db)
    background = factory_background(n, rng) * 10 ** (-snr / 20)
    return _ClipParts(machine, change, fault_db, background, float(snr), rng)


def render_with_levels(cfg: SynthConfig, machine_type: str, machine_id: str, split: str, fault: str | None,
                       index: int) -> tuple[np.ndarray, float | None, float]:
    """:func:`render_clip`'s clip, with how loud its fault and background are:
    ``(audio, fault_db, snr_db)``. ``fault_db`` is the level of what the fault changed (the
    machine's sound with the fault minus the same sound without it) relative to the machine's
    sound with the fault, in dB (None for a normal clip); ``snr_db`` is the machine's level
    over the background's."""
    parts = _render_parts(cfg, machine_type, machine_id, split, fault, index)
    mix = parts.machine + parts.background
    # The recording chain's anti-alias roll-off: real 16 kHz captures have little energy above
    # ~0.45 fs, and a device recorded at 44.1/48 kHz and resampled to 16 kHz loses that band too.
    mix = signal.sosfilt(_ANTI_ALIAS, mix)
    gain_db = -24 + parts.rng.uniform(-1.0, 1.0)  # RMS level, well below clipping
    mix = mix / _rms(mix) * 10 ** (gain_db / 20)
    return np.clip(mix, -1.0, 1.0).astype(np.float32), parts.fault_db, parts.snr_db


def fault_band_level(cfg: SynthConfig, machine_type: str, machine_id: str, split: str, fault: str, index: int,
                     half_width: float = 0.15) -> tuple[float, float]:
    """Where a fault is easiest to hear: ``(level_db, centre_hz)``, the level of what the fault
    changed against everything else in the clip (the machine without that change, and the
    background) within +-``half_width`` of the frequency where their power ratio peaks (Welch
    spectra, 1024 samples): where a detector of the clip's average spectrum would hear it best.
    A fault that comes in short knocks stands out more in the moments it sounds."""
    parts = _render_parts(cfg, machine_type, machine_id, split, fault, index)
    if parts.change is None:
        raise ValueError("fault_band_level needs a fault")
    rest = parts.machine - parts.change + parts.background
    return band_level(parts.change, rest, half_width)


def band_level(signal_part: np.ndarray, rest: np.ndarray, half_width: float = 0.15) -> tuple[float, float]:
    """``(dB, centre Hz)``: the power of ``signal_part`` against ``rest`` within +-``half_width``
    (relative) of the frequency where their power ratio is highest."""
    freqs, p_signal = signal.welch(signal_part, SR, nperseg=1024)
    _, p_rest = signal.welch(rest, SR, nperseg=1024)
    ratio = p_signal / (p_rest + 1e-30)
    ratio[0] = 0.0  # the DC bin has no band around it
    centre = freqs[int(np.argmax(ratio))]
    band = (freqs >= centre * (1 - half_width)) & (freqs <= centre * (1 + half_width))
    return float(10 * np.log10(p_signal[band].sum() / (p_rest[band].sum() + 1e-30) + 1e-30)), float(centre)


@dataclass(frozen=True)
class ClipJob:
    machine_type: str
    machine_id: str
    split: str
    fault: str | None
    index: int

    @property
    def relpath(self) -> str:
        label = "normal" if self.fault is None else "anomaly"
        return f"{self.machine_type}/{self.split}/{label}_{self.machine_id}_{self.index:08d}.wav"


def plan_jobs(cfg: SynthConfig) -> list[ClipJob]:
    """Every clip to write, in a fixed order; anomalies cycle through the type's fault kinds."""
    jobs = []
    for mtype in cfg.types:
        if mtype not in MODELS:
            raise ValueError(f"unknown machine type {mtype!r}; choose from {', '.join(MACHINE_TYPES)}")
        ids = MACHINE_IDS[mtype]
        if not 1 <= cfg.ids <= len(ids):
            raise ValueError(f"--ids must be 1..{len(ids)} for {mtype}")
        faults = sorted(MODELS[mtype].faults)
        for mid in ids[: cfg.ids]:
            jobs += [ClipJob(mtype, mid, "train", None, i) for i in range(cfg.train)]
            jobs += [ClipJob(mtype, mid, "test", None, i) for i in range(cfg.test)]
            jobs += [ClipJob(mtype, mid, "test", faults[i % len(faults)], i) for i in range(cfg.test)]
            # After train and test, and seeded by split name: adding a val split leaves those files byte-identical.
            jobs += [ClipJob(mtype, mid, "val", None, i) for i in range(cfg.val)]
            jobs += [ClipJob(mtype, mid, "val", faults[i % len(faults)], i) for i in range(cfg.val)]
    return jobs
