import numpy as np
import pytest
import soundfile as sf

from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.errors import AudioError

from .conftest import shared_data


def write(path, data, sr=16000, subtype="PCM_16"):
    sf.write(path, data, sr, subtype=subtype)
    return path


def test_eight_channel_file_channel_and_mean():
    path = shared_data("mimii-8ch") / "fan_id_00_normal_00000000_8ch.wav"
    raw, sr = sf.read(path, dtype="float32")
    assert raw.shape[1] == 8 and sr == 16000
    np.testing.assert_array_equal(load_audio(path), raw[:, 0])
    np.testing.assert_array_equal(load_audio(path, channel=3), raw[:, 3])
    np.testing.assert_allclose(load_audio(path, channel="mean"), raw.mean(axis=1), atol=1e-7)
    with pytest.raises(AudioError, match="8 channels, channel 9"):
        load_audio(path, channel=9)


def test_resamples_44k1_to_16k(tmp_path):
    t = np.arange(44100) / 44100
    path = write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), sr=44100, subtype="FLOAT")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) - 1000) <= 1  # 1 Hz bins for 1 s at 16 kHz
    assert abs(np.sqrt(np.mean(y[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "unreadable"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk"), "unreadable"),
        (lambda p: write(p, np.zeros(0, np.float32)), "empty"),
        (lambda p: write(p, np.zeros(100, np.float32)), "too short"),
        (lambda p: write(p, np.full(16000, np.nan, np.float32), subtype="FLOAT"), "non-finite"),
        (lambda p: write(p, np.zeros(16000, np.float32)), "digital silence"),
    ],
    ids=["zero-bytes", "corrupt-header", "no-samples", "too-short", "nan", "silent"],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as info:
        load_audio(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
