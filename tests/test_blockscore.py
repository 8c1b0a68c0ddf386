"""Long files scored block by block give the whole-file score."""

import numpy as np
import pytest
import soundfile as sf

from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.errors import AudioError
from mtad.edge_runtime.pipeline import EdgeScorer


@pytest.fixture(scope="module")
def scorers(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    return {p: EdgeScorer(bundle, bundle.onnx_runner(p, "CPUExecutionProvider")) for p in ("fp32",)}


def _long_clip(tiny_synth, machine_type, seconds):
    clips = sorted((tiny_synth / machine_type / "test").glob("*.wav"))
    y = np.concatenate([load_audio(c) for c in clips])
    return np.resize(y, int(seconds * 16000))


@pytest.mark.parametrize("machine", ["fan/id_00", "valve/id_02"])  # Mahalanobis and MSE recon types
@pytest.mark.parametrize("block_seconds", [1.3, 7.0])
def test_blocks_give_the_whole_file_score(scorers, tiny_synth, tmp_path, machine, block_seconds):
    scorer = scorers["fp32"]
    y = _long_clip(tiny_synth, machine.split("/")[0], 23.7)
    path = tmp_path / "long.wav"
    sf.write(path, y, 16000, subtype="FLOAT")
    whole = scorer.score_audio(load_audio(path), machine)
    blocks = scorer.score_file_blocks(path, machine, block_seconds=block_seconds)
    assert blocks.score == pytest.approx(whole.score, rel=1e-6, abs=1e-6)
    for k, v in whole.components.items():
        assert blocks.components[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    assert blocks.anomaly == whole.anomaly and blocks.threshold == whole.threshold
    # score_file takes the block path for a file longer than one block
    assert scorer.score_file(path, machine, block_seconds=block_seconds).score == blocks.score


def test_blocks_resample_and_mix_channels_like_the_whole_path(scorers, tiny_synth, tmp_path):
    scorer = scorers["fp32"]
    y = _long_clip(tiny_synth, "pump", 12.0)
    from mtad.edge_runtime.audio import resample

    st = np.stack([resample(y, 16000, 44100), 0.5 * resample(y[::-1].copy(), 16000, 44100)], axis=1)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, st, 44100, subtype="FLOAT")
    whole = scorer.score_audio(load_audio(path, channel="mean"), "pump/id_00")
    blocks = scorer.score_file_blocks(path, "pump/id_00", "mean", block_seconds=2.5)
    assert blocks.score == pytest.approx(whole.score, rel=1e-6, abs=1e-6)


def test_block_path_refuses_bad_audio_like_the_whole_path(scorers, tmp_path):
    scorer = scorers["fp32"]
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 5, np.float32), 16000)
    with pytest.raises(AudioError, match="digital silence"):
        scorer.score_file_blocks(silent, "fan/id_00", block_seconds=1.0)
    nan = tmp_path / "nan.wav"
    x = 0.1 * np.random.default_rng(0).standard_normal(16000 * 5).astype(np.float32)
    x[40000] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 non-finite samples"):
        scorer.score_file_blocks(nan, "fan/id_00", block_seconds=1.0)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF" + b"\0" * 100)
    with pytest.raises(AudioError, match="unreadable audio"):
        scorer.score_file_blocks(junk, "fan/id_00", block_seconds=1.0)
