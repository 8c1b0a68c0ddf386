"""The envelope statistic: streaming equals whole, and it sees level modulation the log-mel cannot."""

import numpy as np
import pytest
from scipy import signal

from mtad.edge_runtime.envelope import (
    ENVELOPE_BAND_EDGES_HZ,
    ENVELOPE_MODULATION_EDGES_HZ,
    LINES_HOP,
    LINES_NFFT,
    LINES_SEGMENT,
    EnvelopeStats,
    _LINES_BAND_SUM,
    _LINES_WINDOW,
    _frame_power,
    envelope_dim,
    envelope_vector,
    line_strength,
    lines_dim,
    modulation_power,
    tonality_dim,
)
from mtad.edge_runtime.errors import BundleError
from mtad.edge_runtime.features import LogMelExtractor
from mtad.edge_runtime.scoring import ClipEvidence, ScoringStats, spectral_vector

SR = 16000


def _clips(mod_hz: float):
    """10 s of 1-2 kHz band noise over white noise, steady and with its level swelling at ``mod_hz``."""
    rng = np.random.default_rng(0)
    n = 10 * SR
    t = np.arange(n) / SR
    band = signal.sosfilt(signal.butter(4, [1000, 2000], btype="bandpass", fs=SR, output="sos"), rng.standard_normal(n))
    background = 0.3 * rng.standard_normal(n)
    steady = (0.05 * (band + background)).astype(np.float32)
    swelling = (0.05 * (band * (1 + 0.8 * np.sin(2 * np.pi * mod_hz * t)) + background)).astype(np.float32)
    return steady, swelling


def test_streaming_equals_whole_clip():
    audio = np.random.default_rng(1).standard_normal(7 * SR).astype(np.float32) * 0.1
    whole = envelope_vector(audio)
    acc = EnvelopeStats()
    rng = np.random.default_rng(2)
    i = 0
    while i < len(audio):
        step = int(rng.integers(1, 9000))  # chunks shorter and longer than a frame
        acc.add(audio[i : i + step])
        i += step
    assert whole.shape == (envelope_dim(),) == (132,)
    assert np.all(np.isfinite(whole))
    np.testing.assert_allclose(acc.vector(), whole, rtol=0, atol=1e-6)


def test_modulation_power_from_chunks_equals_the_periodogram_of_the_whole_series():
    levels = np.random.default_rng(3).standard_normal((12, 1251)).astype(np.float32)
    edges, rate = ENVELOPE_MODULATION_EDGES_HZ, 125.0
    x = levels.astype(np.float64)
    power = np.abs(np.fft.rfft(x - x.mean(axis=1, keepdims=True), axis=1)) ** 2 / x.shape[1]
    freqs = np.fft.rfftfreq(x.shape[1], 1 / rate)
    expected = np.stack([power[:, (freqs >= lo) & (freqs < hi)].mean(axis=1) for lo, hi in zip(edges[:-1], edges[1:])], axis=1)
    np.testing.assert_allclose(modulation_power(levels, rate, edges), expected, rtol=1e-12)
    np.testing.assert_allclose(modulation_power([levels[:, :400], levels[:, 400:401], levels[:, 401:]], rate, edges), expected, rtol=1e-12)
    short = modulation_power(levels[:, :20], rate, edges)  # 20 frames resolve nothing below 6.25 Hz
    assert short.shape == (12, 7) and np.all(short[:, :3] == 0) and np.all(short[:, -1] > 0)


def test_too_short_is_refused():
    with pytest.raises(ValueError, match="at least 16 frames"):
        envelope_vector(np.ones(1000, np.float32))


def test_sees_a_25_hz_level_swell_that_the_log_mel_statistic_barely_sees():
    steady, swelling = _clips(25.0)
    change = (envelope_vector(swelling) - envelope_vector(steady))[: -tonality_dim() - lines_dim()].reshape(len(ENVELOPE_BAND_EDGES_HZ) - 1, -1)
    in_range = list(zip(ENVELOPE_MODULATION_EDGES_HZ[:-1], ENVELOPE_MODULATION_EDGES_HZ[1:])).index((16.0, 32.0))
    lo = np.array(ENVELOPE_BAND_EDGES_HZ[:-1])
    hi = np.array(ENVELOPE_BAND_EDGES_HZ[1:])
    inside = (lo >= 1000) & (hi <= 2000)  # bands entirely in the swelling noise
    outside = (hi <= 800) | (lo >= 2700)  # bands well away from it
    assert inside.sum() == 2 and outside.sum() == 8
    assert change[inside, in_range].min() > 2.0  # log power: more than 7x
    assert np.abs(change[outside]).max() < 0.1
    # the log-mel runs at 31.25 frames/s: its statistic moves less than half as much anywhere
    ext = LogMelExtractor()
    assert np.abs(spectral_vector(ext(swelling)) - spectral_vector(ext(steady))).max() < 0.5 * change[inside, in_range].min()


def test_scoring_without_envelope_evidence_is_a_clear_error():
    st = ScoringStats("multitask", ["fan/id_00"], {}, scoring="fusion", components=("envelope",))
    assert st.needs_envelope
    with pytest.raises(BundleError, match="envelope score needs"):
        st.component_vector("envelope", ClipEvidence(None, None, np.zeros((128, 10))))


def test_band_flatness_tells_harmonic_lines_from_noise_at_any_level():
    """The statistic's last numbers: each band's log spectral flatness in the long-term spectrum.
    White noise is flat (near 0) everywhere; a 50 Hz machine's harmonics over it are far from flat
    in the bands they dominate; friction noise filling the gaps between them (a rubbing fault) moves
    those bands back toward flat. A ratio of powers: 12 dB quieter changes nothing."""
    rng = np.random.default_rng(4)
    t = np.arange(10 * SR) / SR
    noise = 0.01 * rng.standard_normal(t.size)
    harmonics = sum(0.1 / k * np.sin(2 * np.pi * 50 * k * t + k) for k in range(3, 40))  # 150-1950 Hz
    machine = (harmonics + noise).astype(np.float32)
    rubbing = (harmonics + noise + 0.1 * signal.sosfilt(signal.butter(4, [300, 1800], btype="bandpass", fs=SR, output="sos"),
                                                          rng.standard_normal(t.size))).astype(np.float32)
    flat = lambda a: envelope_vector(a)[-tonality_dim() - lines_dim() : -lines_dim()]  # noqa: E731
    lo = np.array(ENVELOPE_BAND_EDGES_HZ[:-1])
    hi = np.array(ENVELOPE_BAND_EDGES_HZ[1:])
    lines, above = hi <= 2000, lo >= 1900
    assert lines.sum() == 8 and above.sum() == 4
    white = flat(noise.astype(np.float32))
    assert np.abs(white).max() < 0.05
    assert flat(machine)[lines].max() < -1.0 and np.abs(flat(machine)[above]).max() < 0.05
    inside = (lo >= 280) & (hi <= 1500)  # bands the friction noise fills
    assert inside.sum() == 5 and (flat(rubbing) - flat(machine))[inside].min() > 1.0
    np.testing.assert_allclose(flat(machine / 4), flat(machine), rtol=0, atol=1e-4)


def test_too_short_for_the_long_term_spectrum_is_refused():
    with pytest.raises(ValueError, match="at least 4096 samples"):
        envelope_vector(np.random.default_rng(5).standard_normal(3000).astype(np.float32))


def test_line_strength_hears_a_knock_train_far_below_the_noise():
    """The last numbers: per band and modulation range, how far the envelope spectrum's highest line
    stands above its median. Knocks at 37 Hz ringing at 3.5 kHz, 10 dB below the noise in their band
    (the band's level rises by 0.4 dB), raise the 16-64 Hz line strength of that band; the other
    bands stay put, and a quieter recording changes nothing."""
    noise, knocks = _noise_and_knocks(10)
    lines = lambda a: envelope_vector(a.astype(np.float32))[-lines_dim():].reshape(len(ENVELOPE_BAND_EDGES_HZ) - 1, 3)  # noqa: E731
    quiet, knocking = lines(noise), lines(noise + knocks)
    k = int(np.searchsorted(ENVELOPE_BAND_EDGES_HZ, 3500)) - 1  # the 2749-3799 Hz band
    assert np.abs(quiet).max() < 4.0  # noise alone: the highest of ~1000 bins is a few times the median
    assert knocking[k, 1] - quiet[k, 1] > 2.0  # a line more than 7x higher
    assert knocking[k, 2] - quiet[k, 2] > 1.5  # its harmonics at 74, 111, ... Hz
    assert np.abs(np.delete(knocking - quiet, k, axis=0)).max() < 0.2
    np.testing.assert_allclose(lines((noise + knocks) / 4), knocking, rtol=0, atol=1e-4)


def _noise_and_knocks(seconds: int):
    """Noise, and knocks at 37 Hz ringing at 3.5 kHz 10 dB below the noise in their band."""
    rng = np.random.default_rng(6)
    n = seconds * SR
    noise = 0.05 * rng.standard_normal(n)
    pulses = np.zeros(n)
    pulses[(np.arange(0, seconds, 1 / 37.0) * SR).astype(int)] = 1.0
    ring = signal.sosfilt(signal.butter(2, [3300, 3700], btype="bandpass", fs=SR, output="sos"), pulses)
    band = signal.sosfilt(signal.butter(4, [2749, 3799], btype="bandpass", fs=SR, output="sos"), noise)
    return noise, ring * np.sqrt(np.mean(band ** 2) / np.mean(ring ** 2)) * 10 ** (-10 / 20)


def _knocking(seconds: int) -> np.ndarray:
    noise, knocks = _noise_and_knocks(seconds)
    return (noise + knocks).astype(np.float32)


def test_line_strength_is_zero_where_a_range_holds_under_two_bins():
    power = np.abs(np.random.default_rng(7).standard_normal((2, 600))) + 1.0  # 1.2 s at 500/s: 0.83 Hz bins
    got = line_strength(power, 500.0, ((4.0, 5.0), (4.0, 16.0)))
    assert got.shape == (2, 2) and np.all(got[:, 0] == 0) and np.all(got[:, 1] > 0)
    assert np.array_equal(line_strength([power[:, :100], power[:, 100:]], 500.0, ((4.0, 16.0),)), got[:, 1:])
    assert np.array_equal(line_strength(np.zeros((1, 600)), 500.0, ((4.0, 16.0),)), np.zeros((1, 1)))  # digital silence: 0, not NaN


def test_a_long_recording_averages_the_line_strength_of_10_to_20_s_stretches():
    """45 s with a knock train: stretches of 10, 10, 10 and 15 s (their boundaries fixed by the
    recording, not by how it is fed), averaged by length, with only the stretch in hand kept. A
    periodogram of all 45 s would put the knocks' line far higher than any 10 s clip the
    statistics were fitted on; the average stays on their scale. Under 20 s: the whole recording."""
    audio = _knocking(45)
    acc = EnvelopeStats()
    for i in range(0, len(audio), 7 * SR):
        acc.add(audio[i : i + 7 * SR])
    power = (_frame_power(np.zeros(0, np.float32), audio, LINES_NFFT, LINES_HOP, _LINES_WINDOW)[0] @ _LINES_BAND_SUM).T
    cuts = [0, LINES_SEGMENT, 2 * LINES_SEGMENT, 3 * LINES_SEGMENT, power.shape[1]]
    assert power.shape[1] - cuts[3] == int(1.5 * LINES_SEGMENT) - 3
    stretches = [line_strength(power[:, a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    expected = np.average(stretches, axis=0, weights=np.diff(cuts))
    np.testing.assert_allclose(acc.lines(), expected, rtol=0, atol=1e-9)
    assert sum(c.shape[1] for c in acc.fast_power) == acc.n_fast == power.shape[1] - cuts[3]  # all that is held
    np.testing.assert_allclose(_fed(audio).lines(), expected, rtol=0, atol=1e-9)  # one call: same stretches

    k = int(np.searchsorted(ENVELOPE_BAND_EDGES_HZ, 3500)) - 1
    clip = _fed(audio[: 10 * SR]).lines()
    assert abs(expected[k, 1] - clip[k, 1]) < 0.3
    assert line_strength(power)[k, 1] - clip[k, 1] > 1.0
    short = audio[: 19 * SR]
    np.testing.assert_array_equal(envelope_vector(short)[-lines_dim():].reshape(clip.shape), line_strength(_fed(short).fast_power))


def _fed(audio):
    acc = EnvelopeStats()
    acc.add(audio)
    return acc
