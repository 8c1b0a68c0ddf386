"""Training throughput per preset on the current device: clips (windows) per second.

    .venv/bin/python benchmarks/train_throughput.py [--presets tiny,small,paper] [--steps 5] [--device auto]

Uses random inputs of each preset's window size, batch 64, full multitask loss, Adam.
"""

from __future__ import annotations

import argparse
import time

import torch

from mtad.train.config import load_config, with_classes
from mtad.train.model import MultitaskModel, count_parameters
from mtad.train.trainer import losses, resolve_device


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,small,paper")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else f", {torch.get_num_threads()} threads"))
    print("| preset | parameters | window | s per batch-64 step | windows/s |")
    print("|---|---|---|---|---|")
    for preset in args.presets.split(","):
        cfg = with_classes(load_config(preset), 18, 128)
        model = MultitaskModel(cfg.model).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(64, 128, cfg.model.window, device=device)
        target = torch.softmax(torch.randn(64, 18, device=device), dim=1)
        times = []
        for step in range(args.steps + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                total, _, _ = losses(model, x, target, "multitask", cfg.model.warmup)
            opt.zero_grad()
            total.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if step:  # first step warms up
                times.append(time.perf_counter() - t0)
        s = sorted(times)[len(times) // 2]
        print(f"| {preset} | {count_parameters(model) / 1e6:.2f} M | {cfg.model.window} | {s:.3f} | {64 / s:.0f} |")


if __name__ == "__main__":
    main()
