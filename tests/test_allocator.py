"""glibc's thresholds are fixed so that the front end's large buffers stay in the heap: no page
faults per clip once the first clip has been scored (counted, not timed)."""

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from mtad.edge_runtime.allocator import keep_freed_memory


def _is_glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(ctypes.CDLL(None).gnu_get_libc_version)
    except (OSError, AttributeError):
        return False


GLIBC = _is_glibc()
GLIBC_64 = GLIBC and ctypes.sizeof(ctypes.c_void_p) == 8  # 32-bit glibc refuses the 32 MB mmap threshold

# Minor page faults per clip of the device front end (log-mel + envelope of a 10 s clip read
# with load_audio), in a fresh process, after one clip of warm-up.
PROBE = """
import resource, sys
from mtad.edge_runtime.allocator import keep_freed_memory
applied = keep_freed_memory()
from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.envelope import envelope_vector
from mtad.edge_runtime.features import LogMelExtractor
a = load_audio(sys.argv[1]); extract = LogMelExtractor()
extract(a); envelope_vector(a)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    extract(a); envelope_vector(a)
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""


def front_end_faults(wav, **env) -> tuple[str, float]:
    """(applied, faults per clip) of PROBE, with the user's allocator settings removed from the environment."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MTAD_MALLOC", "GLIBC_TUNABLES") and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE, str(wav)], capture_output=True, text=True, check=True, env={**clean, **env}).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not GLIBC_64, reason="64-bit glibc only (mallopt thresholds)")
def test_front_end_reuses_its_memory_clip_after_clip(tmp_path):
    wav = tmp_path / "clip.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(160000)).astype(np.float32), 16000)
    applied, faults = front_end_faults(wav)
    kept, default_faults = front_end_faults(wav, MTAD_MALLOC="default")
    # glibc's defaults: ~2437 faults per clip (the buffers returned to the OS and faulted in
    # again, 4 KB at a time; README, "Speed"). Fixed thresholds: 0.1 on a quiet machine, up to
    # ~60 while the rest of the suite loads it (the kernel reclaims idle pages).
    assert applied == "True" and kept == "False"
    assert faults < 500 and default_faults > 10 * max(faults, 1.0)


def test_user_settings_win(monkeypatch):
    monkeypatch.setenv("MTAD_MALLOC", "default")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MTAD_MALLOC")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert keep_freed_memory() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert keep_freed_memory() is GLIBC_64
