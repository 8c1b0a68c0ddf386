"""Distributed training: 2 gloo ranks on CPU, launched the way users launch them."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mtad.train.distributed import torchrun_command
from mtad.train.evaluate import compute_metrics, load_run, score_split

# Per-rank BatchNorm statistics (SyncBatchNorm needs GPUs) make a 2-rank CPU run differ slightly
# from one process on the same global batches; measured: 0.4 % (epoch 1) and 0.8 % (epoch 2)
# on the total loss, ~1e-4 on the reconstruction loss, which reads no BatchNorm directly.
LOSS_RTOL = 0.03
RECON_RTOL = 0.005


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_two_ranks_match_one_process_resume_and_evaluate(tiny_synth, tiny_run, tmp_path):
    """``tiny_run`` is the one-process run (tiny preset, seed 0, constant learning rate, so its
    first two epochs are those of a 2-epoch run)."""
    from mtad.edge_runtime.dataset import scan_dataset
    from mtad.train.checkpoint import load_checkpoint

    single = load_checkpoint(tiny_run)["history"][:2]
    out = tmp_path / "ddp"
    common = ["--data", str(tiny_synth), "--out", str(out), "--preset", "tiny", "--seed", "0", "--quiet"]
    first = subprocess.run(torchrun_command(2, common + ["--epochs", "1"]), env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(torchrun_command(2, common + ["--epochs", "2", "--resume"]), env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    # rank 0 alone reports and writes: one summary line, and exactly the files of a one-process run
    assert second.stdout.count("trained tiny/multitask") == 1, second.stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "loss_curve.png", "stats.npz", "stats_split.json", "train_log.csv"]
    run = load_run(out)
    hist = run.ckpt["history"]
    assert [h["epoch"] for h in hist] == [1, 2] and run.ckpt["epoch"] == 2
    for a, b in zip(hist, single):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=LOSS_RTOL)
        np.testing.assert_allclose(a["recon_loss"], b["recon_loss"], rtol=RECON_RTOL)
    assert hist[1]["loss"] < hist[0]["loss"]
    scores, failed = score_split(run, scan_dataset(tiny_synth), progress=False)
    metrics = compute_metrics(scores, failed)
    assert metrics["n_scored"] == 128 and 0 <= metrics["mean"]["auc"] <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_lost_rank_stops_the_other_with_one_line(tiny_synth, tmp_path, how):
    timeout = 10
    port = _free_port()
    ranks = []
    for rank in range(2):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        cmd = [sys.executable, "-m", "mtad.train.cli", "--data", str(tiny_synth), "--out", str(tmp_path / "run"), "--preset", "tiny",
               "--epochs", "500", "--timeout", str(timeout)]
        ranks.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "train_log.csv").exists():  # training is under way
            assert time.time() < deadline and ranks[0].poll() is None, "rank 0 did not start training"
            time.sleep(0.2)
        ranks[1].send_signal(how)
        t0 = time.time()
        _, err = ranks[0].communicate(timeout=timeout + 60)
        waited = time.time() - t0
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert ranks[0].returncode == 1, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0/2: ") and "every rank stops" in last, last
    assert waited < timeout + 15, waited  # never a hang: at worst the process-group timeout


def test_nproc_launches_torchrun_with_the_other_flags(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import mtad.train.distributed as distributed
    from mtad.train.cli import main

    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    calls = []
    monkeypatch.setattr(torchrun, "run", lambda args: calls.append(args))
    argv = ["--data", "d", "--nproc", "3", "--out", str(tmp_path / "o"), "--preset", "tiny", "--loader-workers", "2"]
    monkeypatch.setattr(sys, "argv", ["mtad-train", *argv])
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 0, res.output
    (args,) = calls
    assert args.standalone and args.nproc_per_node == "3" and args.module and args.training_script == "mtad.train.cli"
    assert args.training_script_args == ["--data", "d", "--out", str(tmp_path / "o"), "--preset", "tiny", "--loader-workers", "2"]
    assert distributed.torchrun_command(3, ["--data", "d"])[3:] == ["--standalone", "--nproc-per-node=3", "-m", "mtad.train.cli", "--data", "d"]

    def failing(args):  # what torchrun raises when a rank exits non-zero: one line, no traceback
        raise ChildFailedError("mtad.train.cli", {1: ProcessFailure(local_rank=1, pid=4242, exitcode=1, error_file="")})

    monkeypatch.setattr(torchrun, "run", failing)
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 1 and res.output == "error: distributed training stopped: rank 1 exited with code 1 (its own error line is above)\n"
    monkeypatch.setattr(sys, "argv", ["mtad-train", "--nproc", "0", "--data", "d", "--out", "o"])
    res = CliRunner().invoke(main, ["--nproc", "0", "--data", "d", "--out", "o"])
    assert res.exit_code == 1 and res.output.startswith("error: --nproc must be >= 1")


def test_non_finite_loss_stops_without_overwriting_the_checkpoint(tiny_synth, tmp_path, monkeypatch):
    import torch

    import mtad.train.trainer as trainer
    from mtad.edge_runtime.errors import ConfigError
    from mtad.train.config import load_config

    real = trainer.losses

    def diverging(model, x, target, task, warmup, *args):
        total, rec, cls = real(model, x, target, task, warmup, *args)
        return total * torch.tensor(float("nan")), rec, cls

    monkeypatch.setattr(trainer, "losses", diverging)
    with pytest.raises(ConfigError, match="training diverged: the loss is nan in epoch 1"):
        trainer.train_run(tiny_synth, tmp_path / "run", load_config("tiny", epochs=1), progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_rank_leaves_a_broken_group_to_the_exit_and_skips_teardown(monkeypatch, tmp_path):
    """After a peer died the trainer does not destroy the process group (that can block or abort);
    every rank, failed or not, ends through ``run_rank`` with its one line and exit status,
    skipping the interpreter's teardown, where gloo's threads turned exit 1 (in CI) and once exit 0
    into SIGABRT (-6)."""
    import mtad.train.distributed as distributed
    import mtad.train.trainer as trainer
    from mtad.train.config import load_config

    ctx = distributed.Context(rank=0, world=2, backend="gloo")
    calls = []
    monkeypatch.setattr(distributed, "setup", lambda device, timeout: ctx)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroyed"))

    def lost(*args):
        with distributed.comm_errors(ctx, "epoch 3"):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")

    monkeypatch.setattr(trainer, "_train_run", lost)
    with pytest.raises(distributed.LostRankError, match=r"^rank 0/2: epoch 3 failed, so every rank stops: .*Connection reset by peer"):
        trainer.train_run("d", tmp_path / "run", load_config("tiny", epochs=1), progress=False)
    assert calls == []  # left to the exit
    monkeypatch.setattr(trainer, "_train_run", lambda *a: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError):
        trainer.train_run("d", tmp_path / "run", load_config("tiny", epochs=1), progress=False)
    assert calls == ["destroyed"]  # a healthy group is still left cleanly

    # a rank ends through run_rank: its one line and exit status, and no interpreter teardown (where
    # gloo's leftover threads can abort), whether the group broke or the run went well
    code = ("import atexit, sys, click\n"
            "from mtad.edge_runtime.cli_common import report_errors\n"
            "from mtad.train.distributed import LostRankError, run_rank\n"
            "atexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
            "@click.command()\n@click.option('--lost', is_flag=True)\n@click.option('--bug', is_flag=True)\n@report_errors\n"
            "def rank(lost, bug):\n"
            "    print('partial', end='')\n"
            "    if lost: raise LostRankError('rank 0/2: gone')\n"
            "    if bug: raise ValueError('a bug')\n"
            "run_rank(rank)\n")
    for args, rc, err in ((["--lost"], 1, "error: rank 0/2: gone\n"), ([], 0, "")):
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert (res.returncode, res.stdout, res.stderr) == (rc, "partial", err)
    res = subprocess.run([sys.executable, "-c", code, "--bug"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "ValueError: a bug" in res.stderr and "teardown ran" not in res.stderr
