import numpy as np
import pytest
import soundfile as sf

from mtad.edge_runtime.features import FeatureConfig, LogMelExtractor, fit_normalization, hann_window, mel_filterbank

from .conftest import shared_data

librosa = pytest.importorskip("librosa", reason="librosa is a dev-only dependency for parity tests")


def real_clips():
    return sorted(shared_data("mimii-pairs-0db").glob("*/test/*.wav")) + sorted(shared_data("mimii-fan-0db").glob("fan/train/*.wav"))[:2]


def test_filterbank_matches_librosa_slaney():
    ours = mel_filterbank(FeatureConfig())
    ref = librosa.filters.mel(sr=16000, n_fft=2048, n_mels=128)
    assert ours.shape == (128, 1025)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-7)


def test_window_is_periodic_hann():
    from scipy.signal import get_window

    np.testing.assert_allclose(hann_window(2048), get_window("hann", 2048, fftbins=True), atol=1e-7)


def test_mel_power_matches_librosa_on_real_clips():
    extract = LogMelExtractor()
    clips = real_clips()
    assert len(clips) >= 16
    worst = 0.0
    for path in clips:
        y, sr = sf.read(path, dtype="float32")
        assert sr == 16000
        ours = extract.mel_power(y)
        ref = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=2048, hop_length=512, n_mels=128, power=2.0, pad_mode="constant")
        assert ours.shape == ref.shape == (128, 313)
        worst = max(worst, float(np.abs(ours - ref).max() / np.abs(ref).max()))
    assert worst < 1e-4, worst


def test_log_mel_matches_librosa_power_to_db():
    y, _ = sf.read(real_clips()[0], dtype="float32")
    ours = LogMelExtractor()(y)
    ref = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=16000, n_fft=2048, hop_length=512, n_mels=128, pad_mode="constant"), ref=1.0, amin=1e-8, top_db=None)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_frame_count_and_reflect_mode(rng):
    cfg = FeatureConfig(pad_mode="reflect")
    y = rng.standard_normal(16000).astype(np.float32)
    ours = LogMelExtractor(cfg).mel_power(y)
    ref = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=2048, hop_length=512, n_mels=128, pad_mode="reflect")
    assert ours.shape[1] == cfg.n_frames(16000) == 32
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_feature_config_round_trip():
    cfg = FeatureConfig()
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels) == (16000, 2048, 512, 128)


def test_fit_normalization(rng):
    a = rng.normal(3.0, 2.0, size=(128, 500)).astype(np.float32)
    b = rng.normal(3.0, 2.0, size=(128, 300)).astype(np.float32)
    norm = fit_normalization([a, b])
    both = np.concatenate([a, b], axis=1)
    np.testing.assert_allclose(norm.mean, both.mean(axis=1), atol=1e-4)
    np.testing.assert_allclose(norm.std, both.std(axis=1), rtol=1e-4)
    z = norm.apply(both)
    assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-3
