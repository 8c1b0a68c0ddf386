"""``kill -9`` during a checkpoint write and during ``mtad-export``: the previous checkpoint or
bundle must still load, and nothing half-written may sit where a reader looks.

Checkpoints: a writer process saves checkpoints in a loop and is killed at increasing delays
after its first write, and at increasing delays after a write is seen in progress (its temp
file exists); after every kill the checkpoint is loaded and must be that writer's last whole
version. Export: the real ``mtad-export`` is killed at points picked from its own
progress lines (during the ONNX export, then at growing delays after the last check, where the
statistics, manifest and swap are written); after every kill the bundle must load.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mtad.edge_runtime.bundle import load_bundle
from mtad.export.bundle_writer import export_bundle

from .conftest import TALLY

# Kill points: seconds after the writer's first completed write, then seconds after a temp file
# (a write in progress) is seen.
KILL_AFTER_START_S = (0.0, 0.002, 0.01, 0.04, 0.15)
KILL_AFTER_TEMP_S = (0.0, 0.0, 0.0002, 0.0005, 0.001, 0.003)

WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from mtad.train.checkpoint import load_checkpoint, model_from_checkpoint, norms_from_checkpoint, save_checkpoint
    from mtad.train.config import RunConfig, train_config_from_dict
    from mtad.train.model import ModelConfig
    from mtad.edge_runtime.features import FeatureConfig

    src, target = sys.argv[1], Path(sys.argv[2])
    ckpt = load_checkpoint(src)
    model = model_from_checkpoint(ckpt)
    cfg = RunConfig(ckpt["config"]["preset"], ModelConfig.from_dict(ckpt["config"]["model"]), train_config_from_dict(ckpt["config"]["train"]))
    args = dict(model=model, optimizer=None, cfg=cfg, feature_cfg=FeatureConfig(), class_map=ckpt["class_map"], norms=norms_from_checkpoint(ckpt))
    for line in sys.stdin:  # one command per trial: fork a writer that saves forever, print its pid
        base = int(line)
        pid = os.fork()
        if pid == 0:
            save_checkpoint(target, epoch=base, history=[{"version": base}], **args)
            os.write(1, f"{os.getpid()}\\n".encode())  # after one whole write: the loop is running
            i = 1
            while True:
                save_checkpoint(target, epoch=base + i, history=[{"version": base + i}], **args)
                i += 1
        os.waitpid(pid, 0)  # returns once the test has killed it
""")


def _temp_files(folder: Path, stem: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{stem}.") and ".tmp" in p.name)


def _wait_for_temp(folder: Path, stem: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not _temp_files(folder, stem):
        if time.monotonic() > end:
            raise AssertionError("the writer never started a write")


def test_kill9_during_checkpoint_writes(tiny_run, tmp_path):
    from mtad.train.checkpoint import load_checkpoint, model_from_checkpoint

    target = tmp_path / "checkpoint.pt"
    shutil.copy(tiny_run / "checkpoint.pt", target)
    server = subprocess.Popen([sys.executable, "-c", WRITER, str(tiny_run), str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    points = [("start", d) for d in KILL_AFTER_START_S] + [("temp", d) for d in KILL_AFTER_TEMP_S]
    mid_write, last = 0, None
    try:
        for trial, (trigger, delay) in enumerate(points, start=1):
            base = trial * 1_000_000
            server.stdin.write(f"{base}\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            if trigger == "temp":
                _wait_for_temp(tmp_path, "checkpoint")
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)  # let the server reap it
            left = _temp_files(tmp_path, "checkpoint")
            mid_write += bool(left)
            ckpt = load_checkpoint(target)  # whole: this writer's last completed version
            model_from_checkpoint(ckpt)
            assert base <= ckpt["epoch"] < base + 1_000_000 and ckpt["history"] == [{"version": ckpt["epoch"]}], (trial, ckpt["epoch"])
            assert last is None or ckpt["epoch"] > last
            last = ckpt["epoch"]
            for name in left:  # a killed writer leaves a hidden temp file, never a partial checkpoint.pt
                assert name != target.name and name.endswith(".tmp.pt")
                (tmp_path / name).unlink()
            TALLY["kill -9 during checkpoint writes (survived)"] += 1
    finally:
        server.stdin.close()
        server.kill()
        server.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    TALLY["kill -9 checkpoint: killed mid-write"] += mid_write
    assert mid_write >= 3, f"only {mid_write} of {len(points)} kills landed inside a write"


def _export_cmd(run: Path, out: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("mtad-export")), "--run", str(run), "--out", str(out), "--force"]


def _kill_export_after(run: Path, out: Path, marker: str | None, delay: float) -> str:
    """Start ``mtad-export``; SIGKILL it ``delay`` s after a stderr line starting with
    ``marker`` (after start if None). Returns the stage the kill hit."""
    proc = subprocess.Popen(_export_cmd(run, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen, lines = None, []
        if marker is not None:
            for line in proc.stderr:
                seen = line.strip()
                lines.append(seen)
                if line.startswith(marker):
                    break
            else:
                raise AssertionError(f"mtad-export ended before printing {marker!r}: {lines[-3:]}")
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return f"{delay * 1000:.0f} ms after {seen!r}" if marker else f"{delay:.1f} s after start"


def _bundle_state(out: Path) -> tuple[int, list[str]]:
    """(manifest inode, sorted files) of the bundle in place, which must load and be whole."""
    b = load_bundle(out)
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([*b.manifest["files"], "manifest.yaml"]), on_disk  # nothing extra, nothing partial
    return (out / "manifest.yaml").stat().st_ino, on_disk


def test_kill9_during_export(tiny_run, fault_bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(fault_bundle, out)
    state = _bundle_state(out)
    # During the ONNX export (the temp bundle is half built), then at growing delays after the
    # last check: statistics, manifest, the loader's own check, the swap.
    points = [("export: FP32 ONNX", 0.0), ("check fp32", 0.0), ("check fp32", 0.05), ("check fp32", 0.15)]
    outcomes = []
    for marker, delay in points:
        stage = _kill_export_after(tiny_run, out, marker, delay)
        new_state = _bundle_state(out)  # loads, whole: the previous bundle or a complete new one
        left = sorted(p.name for p in tmp_path.iterdir() if p.name != "bundle")
        assert all(n.startswith((".bundle.tmp-", ".bundle.old-")) for n in left), left
        outcomes.append({"killed": stage, "bundle": "new" if new_state[0] != state[0] else "previous", "temp_left": left})
        state = new_state
        TALLY["kill -9 during mtad-export (survived)"] += 1
    assert outcomes[0]["bundle"] == "previous" and outcomes[0]["temp_left"], outcomes[0]  # killed mid-export
    TALLY["kill -9 export: killed mid-export"] += sum(bool(o["temp_left"]) for o in outcomes)
    export_bundle(tiny_run, out, force=True, progress=False, log=lambda m: None)  # in process: torch is loaded already
    _bundle_state(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # the next export swept what killed ones left
    (tmp_path.parent / "kill9-export-outcomes.json").write_text(json.dumps(outcomes, indent=1))
