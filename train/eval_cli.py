"""``mtad-eval``: AUC/pAUC per machine id and type, thresholds' precision/recall, plots."""

from __future__ import annotations

from pathlib import Path

import click

from mtad.edge_runtime.allocator import keep_freed_memory
from mtad.edge_runtime.cli_common import parse_csv, report_errors
from mtad.edge_runtime.errors import ConfigError
from mtad.edge_runtime.scoring import COMPONENTS, COVARIANCES, SCORINGS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the metrics as JSON.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), help="Write ROC and histogram PNGs here.")
@click.option("--compare", "compare", multiple=True, type=click.Path(path_type=Path), help="Other runs to print side by side (repeatable).")
@click.option("--refit", is_flag=True, help="Refit scoring statistics and thresholds on DATA's training normals first.")
@click.option("--stats-holdout", type=float, help="With --refit: 0 fits in-sample on every training normal (default: the run's own held-out split).")
@click.option("--scoring", type=click.Choice(SCORINGS), help="With --refit: fusion (default) or paper (the paper's 2-D Mahalanobis).")
@click.option("--components", help=f"With --refit and fusion: comma-separated subset of {','.join(COMPONENTS)}.")
@click.option("--covariance", type=click.Choice(COVARIANCES), help="With --refit: how the shared covariances are estimated (default: the run's).")
@click.option("--baseline", is_flag=True, help="Also score DATA with the simple baseline (per-id log-mel mean/std statistics) and compare.")
@click.option("--quiet", is_flag=True)
@report_errors
def main(run_dir, data, json_path, plots_dir, compare, refit, stats_holdout, scoring, components, covariance, baseline, quiet):
    """Score DATA's test clips with RUN and report AUC/pAUC (DCASE2020 definitions)."""
    keep_freed_memory()
    from mtad.edge_runtime.dataset import scan_dataset

    from .evaluate import compute_metrics, format_comparison, format_tables, load_run, refit_stats, score_split, write_json, write_plots

    if (scoring or components or covariance or stats_holdout is not None) and not refit:
        raise ConfigError("--scoring, --components, --covariance and --stats-holdout change the fitted statistics: pass --refit with them")
    run = load_run(run_dir, require_stats=not refit)
    if refit:
        comps = tuple(parse_csv(components)) if components else None
        refit_stats(run, data, stats_holdout, scoring, comps, progress=not quiet, log=lambda m: click.echo(m, err=True), covariance=covariance)
        click.echo(f"refitted scoring statistics and thresholds -> {Path(run_dir) / 'stats.npz'}", err=True)
    index = scan_dataset(data)
    scores, failed = score_split(run, index, progress=not quiet)
    metrics = compute_metrics(scores, failed, run.threshold_clips, run.stats.false_alarm_rate)
    click.echo(format_tables(metrics, f"run {run_dir} ({run.task}, {run.stats.scoring} scoring) on {data}", run.stats.false_alarm_rate))
    if plots_dir:
        for p in write_plots(scores, metrics, plots_dir):
            click.echo(f"plot: {p}", err=True)
    base = None
    if baseline:
        from .baseline import baseline_metrics

        base = baseline_metrics(index)
        if base["mean"]["auc"] is None:
            raise ConfigError(f"--baseline: {data} has no training normals and labelled test clips of the same ids to fit and score it on")
        metrics["baseline"] = base
    if json_path:
        write_json(metrics, json_path)
    if compare or base:
        named = [(Path(run_dir).name, metrics)]
        for other in compare:
            o = load_run(other)
            s, f = score_split(o, index, progress=not quiet)
            named.append((Path(other).name, compute_metrics(s, f, o.threshold_clips, o.stats.false_alarm_rate)))
        if base:
            named.append(("simple baseline", base))
        click.echo("\nAUC/pAUC per type\n" + format_comparison(named))
    far = metrics["mean"].get("false_alarm_rate")
    click.echo(f"mean AUC {metrics['mean']['auc']:.3f}, pAUC {metrics['mean']['pauc']:.3f}"
               + (f", false-alarm rate {far:.2f} (target {run.stats.false_alarm_rate:g})" if far is not None else "")
               + f" over {metrics['n_scored']} clips"
               + (f"; simple baseline AUC {base['mean']['auc']:.3f} on the same clips" if base else "")
               + (f"; {metrics['n_excluded']} unreadable clip(s) excluded" if metrics["n_excluded"] else ""))
