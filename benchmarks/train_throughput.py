"""Training throughput per preset: windows per second, GPU memory, and DDP scaling efficiency.

    .venv/bin/python benchmarks/train_throughput.py [--presets tiny,small,paper] [--steps 10] [--device auto]
        [--nproc N] [--batch 64] [--channels-last] [--compile]

Random inputs of each preset's window size, the full multitask loss through the same
loss module the trainer uses, AdamW. ``--batch`` is the global batch, split over the ranks as
in training. ``--nproc N`` (> 1) first measures one process, then relaunches this script under
torchrun with N ranks (NCCL on CUDA, one GPU per rank; gloo on CPU) and prints the scaling
efficiency: N-rank windows/s / (N x one-process windows/s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from mtad.train.config import load_config, with_classes
from mtad.train.model import MultitaskModel, count_parameters
from mtad.train.trainer import _LossModule, resolve_device


def measure(preset: str, device: str, batch: int, steps: int, channels_last: bool, compile_: bool, rank: int = 0, world: int = 1) -> dict:
    cfg = with_classes(load_config(preset), 18, 128)
    torch.manual_seed(0)
    model = MultitaskModel(cfg.model).to(device)
    if channels_last:
        model.classifier.to(memory_format=torch.channels_last)
    step_model = _LossModule(model, "multitask", cfg.model.warmup)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device == "cuda":
            step_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(step_model)
        step_model = DistributedDataParallel(step_model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None, find_unused_parameters=True)
    if compile_:
        step_model = torch.compile(step_model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    local = len(range(batch)[rank::world])
    x = torch.randn(local, 128, cfg.model.window, device=device)
    target = torch.softmax(torch.randn(local, 18, device=device), dim=1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 2):  # two warm-up steps (cuDNN autotuning, compilation)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            parts = step_model(x, target)
        opt.zero_grad(set_to_none=True)
        parts[0].backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    s = sorted(times)[len(times) // 2]
    mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"preset": preset, "params": count_parameters(model) / 1e6, "window": cfg.model.window, "step_s": s, "windows_s": batch / s, "gpu_gib": mem}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,small,paper")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64, help="global batch, split over the ranks")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--baseline", default="", help=argparse.SUPPRESS)  # one-process windows/s per preset, for the ranks
    args = ap.parse_args()
    device = resolve_device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    presets = args.presets.split(",")
    flags = f"channels_last={args.channels_last}, compile={args.compile}"

    if world > 1:  # a rank under torchrun
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        if device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        base = dict(zip(presets, map(float, args.baseline.split(",")))) if args.baseline else {}
        for preset in presets:
            r = measure(preset, device, args.batch, args.steps, args.channels_last, args.compile, rank, world)
            mem = torch.tensor([r["gpu_gib"] if device == "cuda" else 0.0], device="cuda" if device == "cuda" else "cpu")
            dist.all_reduce(mem, op=dist.ReduceOp.MAX)
            if rank == 0:
                eff = r["windows_s"] / (world * base[preset]) if preset in base else float("nan")
                gpu = f"{mem.item():.2f}" if device == "cuda" else "-"
                print(f"| {preset} | {world} | {r['params']:.2f} M | {r['window']} | {r['step_s']:.3f} | {r['windows_s']:.0f} | {gpu} | {eff:.0%} |", flush=True)
        dist.destroy_process_group()
        return

    name = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device: {device} ({name}), global batch {args.batch}, {flags}")
    print("| preset | processes | parameters | window | s per step | windows/s | peak GPU memory per rank (GiB) | scaling efficiency |")
    print("|---|---|---|---|---|---|---|---|")
    base = []
    for preset in presets:
        r = measure(preset, device, args.batch, args.steps, args.channels_last, args.compile)
        base.append(r["windows_s"])
        gpu = f"{r['gpu_gib']:.2f}" if device == "cuda" else "-"
        print(f"| {preset} | 1 | {r['params']:.2f} M | {r['window']} | {r['step_s']:.3f} | {r['windows_s']:.0f} | {gpu} | 100% |", flush=True)
    if args.nproc > 1:
        if device == "cuda" and torch.cuda.device_count() < args.nproc:
            sys.exit(f"error: --nproc {args.nproc} needs {args.nproc} GPUs, torch sees {torch.cuda.device_count()}")
        argv, skip = [], False  # the ranks get the same flags, less --nproc (torchrun would take it for its own)
        for a in sys.argv[1:]:
            if skip or a.startswith("--nproc"):
                skip = a == "--nproc"
                continue
            argv.append(a)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}", __file__, *argv,
               "--baseline", ",".join(f"{b:.6g}" for b in base)]
        sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
