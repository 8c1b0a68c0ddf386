"""``mtad-train``: train the multitask model (or an ablation) on a DCASE2020-layout data root."""

from __future__ import annotations

from pathlib import Path

import click

from mtad.edge_runtime.allocator import keep_freed_memory
from mtad.edge_runtime.cli_common import report_errors

from mtad.edge_runtime.scoring import COMPONENTS, COVARIANCES, DEFAULT_COMPONENTS, SCORINGS

from .config import PRESETS, TASKS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Data root in the DCASE2020 Task 2 layout.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory to create.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML with 'model' and 'train' sections.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="small", show_default=True)
@click.option("--epochs", type=int, help="Override the preset's epoch count.")
@click.option("--task", type=click.Choice(TASKS), help="multitask (paper), or the recon/classify ablations.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Default auto: CUDA when present.")
@click.option("--seed", type=int)
@click.option("--stats-holdout", type=float, help="Fraction of each id's training normals kept out of training for scoring statistics (default: 0.5 with the small preset, 0.25 with paper and tiny; 0 = in-sample, warned).")
@click.option("--scoring", type=click.Choice(SCORINGS), help="fusion (default: per-id, calibrated) or paper (2-D Mahalanobis per type).")
@click.option("--components", help=f"Fusion components, comma-separated subset of {','.join(COMPONENTS)} (default {','.join(DEFAULT_COMPONENTS)}: "
              "the model-free statistic, best in every measured table; recon,acoustic is the learned fusion, the tiny preset's default).")
@click.option("--covariance", type=click.Choice(COVARIANCES),
              help="Shared covariance of the distance scores: factor (default: factor analysis, 16 factors, more as the clips allow) or ledoit-wolf (the previous rule).")
@click.option("--early-stopping", type=int, metavar="PATIENCE",
              help="Stop when the held-out normals' loss has not improved for PATIENCE epochs and keep the best epoch's weights (0 = off).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes that build the feature cache (results do not change).")
@click.option("--loader-workers", type=int, default=0, show_default=True, help="DataLoader worker processes that assemble batches (results do not change).")
@click.option("--channels-last", is_flag=True, help="Run the ResNet in channels-last memory layout (faster convolutions on GPUs).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the training step (needs a C++ compiler; pays off on long GPU runs).")
@click.option("--nproc", type=int, help="Train on this many processes of this node (one per GPU): launches torchrun.")
@click.option("--timeout", type=float, default=1800, show_default=True, help="Seconds a rank waits for the others before every rank stops with an error.")
@report_errors
def main(data, out, config_path, preset, epochs, task, device, seed, stats_holdout, scoring, components, covariance, early_stopping, resume, quiet,
         workers, loader_workers, channels_last, compile_, nproc, timeout):
    """Train on the normal clips of DATA's train split; write checkpoint, config, log and statistics to OUT.

    Several GPUs or nodes: start it with torchrun (``torchrun --nproc-per-node N -m mtad.train.cli ...``)
    or pass --nproc N on one node. The configured batch size is the global batch, split over the ranks.
    """
    keep_freed_memory()
    import sys

    if nproc is not None:
        from .distributed import launch

        args = sys.argv[1:]
        i = next(k for k, a in enumerate(args) if a == "--nproc" or a.startswith("--nproc="))
        del args[i : i + (1 if "=" in args[i] else 2)]
        sys.exit(launch(nproc, args))
    from .config import load_config
    from .trainer import train_run

    cfg = load_config(preset, config_path, epochs=epochs, task=task, device=device, seed=seed, stats_holdout=stats_holdout,
                      scoring=scoring, components=components, covariance=covariance, early_stopping=early_stopping)
    result = train_run(data, out, cfg, resume=resume, progress=not quiet, log=lambda m: click.echo(m, err=True), workers=workers,
                       loader_workers=loader_workers, channels_last=channels_last, compile=compile_, timeout=timeout)
    if result.stats is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    h = result.history
    click.echo(
        f"trained {cfg.preset}/{cfg.train.task} on {result.n_train_clips} clips in {result.seconds:.0f}s: "
        f"loss {h[0]['loss']:.4f} -> {h[-1]['loss']:.4f} over {len(h)} epochs{result.stopped_note}; run written to {out}"
    )


def entry() -> None:
    """``mtad-train``, and torchrun's ``-m mtad.train.cli``: a rank of a distributed run (torchrun
    sets ``WORLD_SIZE``) ends through :func:`~.distributed.run_rank`, without interpreter teardown."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        from .distributed import run_rank

        run_rank(main)
    main()


if __name__ == "__main__":  # torchrun -m mtad.train.cli
    entry()
