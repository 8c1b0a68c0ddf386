"""ONNX Runtime runner: optimisation level from Q/DQ presence and the CPU's int8 dot products."""

import sys

import pytest

from mtad.edge_runtime.runners import choose_optimization_level, has_qdq, int8_dot_features

X86_NO_VNNI = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx avx2 fma\n"
X86_VNNI = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
# Jetson Orin (Cortex-A78AE): dot product, no i8mm; Graviton3 (Neoverse V1): both; Nano (A57): neither.
ORIN = "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm\nCPU implementer\t: 0x41\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sha512 sve asimdfhm i8mm bf16\n"
NANO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"


def test_int8_dot_features_read_x86_flags_and_aarch64_features():
    assert int8_dot_features(X86_NO_VNNI) == []
    assert int8_dot_features(X86_VNNI) == ["avx512_vnni"]
    assert int8_dot_features(ORIN) == ["asimddp"]
    assert int8_dot_features(GRAVITON3) == ["asimddp", "i8mm"]
    assert int8_dot_features(NANO) == []
    assert int8_dot_features("model name\t: asimddp in a name field\n") == []  # only flags/Features lines count


@pytest.mark.parametrize("cpuinfo, qdq, reduce_range, level", [
    (X86_NO_VNNI, False, False, "ALL"),  # float model: full fusion, whatever the CPU
    (NANO, False, False, "ALL"),
    (X86_NO_VNNI, True, False, "BASIC"),  # saturating u8s8 kernels: stay float-simulated
    (X86_NO_VNNI, True, True, "ALL"),  # 7-bit weights cannot saturate
    (X86_VNNI, True, False, "ALL"),
    (ORIN, True, False, "ALL"),  # a Jetson Orin used to fall to BASIC (x86 flags only)
    (GRAVITON3, True, False, "ALL"),
    (NANO, True, False, "BASIC"),
])
def test_optimization_level_follows_qdq_and_cpu(cpuinfo, qdq, reduce_range, level):
    chosen, reason = choose_optimization_level(qdq, reduce_range, int8_dot_features(cpuinfo))
    assert chosen == level and reason


def test_has_qdq_and_the_runner_level(tiny_bundle):
    from mtad.edge_runtime.bundle import load_bundle
    from mtad.edge_runtime.runners import cpu_int8_features

    assert has_qdq(tiny_bundle / "models" / "int8.onnx") and not has_qdq(tiny_bundle / "models" / "fp32.onnx")
    bundle = load_bundle(tiny_bundle)
    assert bundle.variant("int8").has_qdq is True and bundle.variant("fp32").has_qdq is False  # recorded at export
    assert bundle.onnx_runner("fp32", "CPUExecutionProvider").optimization_level == "ORT_ENABLE_ALL"
    int8 = bundle.onnx_runner("int8", "CPUExecutionProvider")
    assert int8.optimization_level == ("ORT_ENABLE_ALL" if cpu_int8_features() else "ORT_ENABLE_BASIC")
    assert "Q/DQ" in int8.describe()


def test_missing_onnxruntime_is_one_line(monkeypatch, tiny_bundle):
    from mtad.edge_runtime.errors import MtadError
    from mtad.edge_runtime.runners import OnnxRuntimeRunner

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(MtadError, match=r"ONNX Runtime is not installed: `pip install 'mtad\[cpu\]'`.*onnxruntime-gpu") as err:
        OnnxRuntimeRunner(tiny_bundle / "models" / "fp32.onnx")
    assert "\n" not in str(err.value)
