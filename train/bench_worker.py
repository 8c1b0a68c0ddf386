"""PyTorch eager reference for the edge benchmark (runs in the benchmark's child process)."""

from __future__ import annotations




def make_torch_runner(bundle, backend, precision, threads, run_dir):
    import torch

    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .reference import TorchRunner

    torch.set_num_threads(threads)
    return TorchRunner(model_from_checkpoint(load_checkpoint(run_dir)))


def worker(bundle_dir, backend, precision, clip, machine, repeats, threads, run_dir):
    from mtad.edge_runtime.bench import worker as edge_worker

    return edge_worker(bundle_dir, backend, precision, clip, machine, repeats, threads, run_dir, make=make_torch_runner)


