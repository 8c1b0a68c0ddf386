"""Distributed data-parallel training under ``torchrun``: the process group, rank roles, agreement.

``torchrun`` (or Slurm/Kubernetes launching it) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them. Without them the run is a single
process and nothing here talks to anybody.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

from mtad.edge_runtime.errors import ConfigError, MtadError

DEFAULT_TIMEOUT_S = 1800  # a collective that waits longer than this means a rank is gone or stuck


# How gloo and NCCL word a peer that died or a collective that timed out.
_COMM_FAILURE = re.compile(r"gloo|nccl|connection|closed by peer|timed out|timeout|socket|broken pipe|rendezvous", re.I)


class DistributedError(MtadError):
    """Another rank failed or stopped answering; every rank stops."""


class LostRankError(DistributedError):
    """A collective failed in this rank because a peer died or timed out: the process group is
    broken, so it is not destroyed (that can block); the process ends through :func:`run_rank`."""


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Context:
    """Join the process group torchrun described (NCCL on CUDA, gloo on CPU); a single
    process when ``WORLD_SIZE`` is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start distributed runs with torchrun (or mtad-train --nproc N)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if timeout_s <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {timeout_s}")
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"rank {rank}: local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) on this node; "
                              f"--nproc-per-node must not exceed the GPUs per node")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        with comm_errors(Context(rank, world, local_rank, backend), "joining the process group"):
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Context(rank, world, local_rank, backend)


def shutdown(ctx: Context, broken: bool = False) -> None:
    """Leave the process group; after a lost rank (``broken``) leave it to the process's exit,
    since destroying a group whose peer is gone can block or abort."""
    if ctx.distributed and dist.is_initialized() and not broken:
        dist.destroy_process_group()


def run_rank(entry: Callable[[], object]) -> NoReturn:
    """Run a torchrun rank's command line ``entry`` and end the process with its exit status,
    skipping the interpreter's teardown.

    gloo's worker threads can outlive the process group, and when the interpreter finalises what
    still holds them, C++ calls ``std::terminate`` ("terminate called without an active
    exception"): exit 1 after a lost rank (in CI), and once exit 0 of a healthy rank (in this
    project's suite), became SIGABRT. Every file is closed by then, and rank 0's checkpoint,
    statistics and split were written to temp files and renamed into place, so the teardown is
    skipped; stdout and stderr are flushed first.
    """
    code = 0
    try:
        entry()
    except SystemExit as exc:  # click ends every command this way
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # a bug: its traceback, as Python would print it
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def comm_errors(ctx: Context, doing: str):
    """Turn a failed or timed-out collective into one :class:`DistributedError` line."""
    if not ctx.distributed:
        yield
        return
    try:
        yield
    except (RuntimeError, dist.DistError) as exc:
        if not (isinstance(exc, dist.DistError) or _COMM_FAILURE.search(str(exc))):
            raise  # a bug or an out-of-memory on this rank: its own traceback
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise LostRankError(f"rank {ctx.rank}/{ctx.world}: {doing} failed, so every rank stops: another rank "
                            f"exited or stopped answering ({first})") from None


def agree(ctx: Context, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (stop together)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device(ctx))
    with comm_errors(ctx, "agreeing on whether to stop"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(ctx: Context, values: list[float]) -> list[float]:
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(ctx))
    with comm_errors(ctx, "summing the epoch's losses"):
        dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: Context, doing: str) -> None:
    if ctx.distributed:
        with comm_errors(ctx, doing):
            dist.barrier()


def _comm_device(ctx: Context) -> str:
    return "cuda" if ctx.backend == "nccl" else "cpu"


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m mtad.train.cli ARGS`` (one node)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "mtad.train.cli", *args]


def launch(nproc: int, args: list[str]) -> int:
    """Run ``mtad-train ARGS`` in ``nproc`` processes on this node through torchrun; its exit code."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    # torchrun in this process rather than as a command: its entry point re-raises a failed
    # rank's ChildFailedError as a traceback; each rank has already said why in one line.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(torchrun_command(nproc, args)[3:]))
    except ChildFailedError as exc:
        failures = sorted(exc.failures.values(), key=lambda f: getattr(f, "timestamp", 0))
        first = failures[0] if failures else None
        where = f"rank {first.local_rank} exited with code {first.exitcode}" if first is not None else "a rank failed"
        raise DistributedError(f"distributed training stopped: {where} (its own error line is above)") from None
    return 0
