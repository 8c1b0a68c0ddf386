"""``mtad-parity``: does each exported variant detect anomalies as well as the PyTorch model?

With --run and --data: full QA parity on DATA's test clips (needs the train extra).
With --bundle alone: on-device parity against reference scores recorded at export time
(edge runtime only, no torch).

Either way it first prints the sizes of the sets involved, and refuses (one line, exit 1)
to report on clips the bundle's manifest records in its calibration or accuracy-control set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mtad.edge_runtime.allocator import keep_freed_memory
from mtad.edge_runtime.cli_common import report_errors

EXIT_OVER_BUDGET = 4


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="Training run: the PyTorch reference.")
@click.option("--data", type=click.Path(path_type=Path), help="Data root whose test clips are scored (with --run).")
@click.option("--budget", "budget_text", default="fp32=0.001,fp16=0.005,int8=0.01", show_default=True, help="Max |dAUC| per machine, per precision (on the device: never tighter than one swapped pair).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="PNG scatter of variant vs reference scores.")
@click.option("--quiet", is_flag=True)
@report_errors
def main(bundle_dir, run_dir, data, budget_text, json_path, plot_path, quiet):
    """Score with the reference and every bundle variant; exit 4 if any machine drifts over budget:
    |dAUC| over --budget, or Spearman rho / worst relative score error past the score budgets."""
    keep_freed_memory()
    from mtad.edge_runtime.constants import DEFAULT_BUDGETS, parse_budgets
    from mtad.edge_runtime.parity import format_report, scatter_plot
    from mtad.edge_runtime.runners import NoModelRunner

    budgets = parse_budgets(budget_text, "--budget", defaults=DEFAULT_BUDGETS)
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    used_sets = {}

    def show_sets(sets):  # before any scoring: the sizes of the sets this report uses (it refuses overlapping ones)
        from .parity import sets_line

        used_sets.update(sets)
        click.echo(sets_line(sets))

    if (run_dir is None) != (data is None):
        raise click.UsageError("give both --run and --data (QA parity), or neither (on-device parity against the bundle's reference set)")
    if run_dir is not None:
        from .parity import full_parity

        results, skipped, reference, scored = full_parity(run_dir, bundle_dir, data, budgets, progress=not quiet, log=log, on_sets=show_sets)
    else:
        from .parity import device_parity

        results, skipped, reference, scored = device_parity(bundle_dir, budgets, log=log, on_sets=show_sets)
    # a model-free bundle's reference is the run's statistics (at export, for the recorded scores), not PyTorch
    source = "statistics" if list(results) == [NoModelRunner.name] else "pytorch"
    mode = f"{source} reference on test clips" if run_dir is not None else f"recorded {source} scores on the bundle's reference set"
    click.echo(format_report(results))
    for name, why in skipped.items():
        click.echo(f"{name}: skipped ({why})")
    if json_path:
        from mtad.edge_runtime.parity import DEFAULT_SCORE_BUDGETS

        from mtad.edge_runtime.atomic import atomic_write

        with atomic_write(json_path, "w") as f:
            f.write(json.dumps({"mode": mode, "budgets": budgets, "score_budgets": DEFAULT_SCORE_BUDGETS, "data_sets": used_sets,
                                "variants": results, "skipped": skipped}, indent=1))
    if plot_path and not scatter_plot(reference, scored, plot_path):
        log("parity: matplotlib not installed, no plot")
    over = {name: r["over_budget"] for name, r in results.items() if r["over_budget"]}
    drift = {name: r["score_over_budget"] for name, r in results.items() if r["score_over_budget"]}
    worst = max(((n, r["max_abs_dauc"]) for n, r in results.items() if r["max_abs_dauc"] is not None), key=lambda t: t[1], default=None)
    headline = f"parity ({mode}): {len(results)} variant(s)" + (f", worst |dAUC| {worst[1]:.4f} ({worst[0]})" if worst else "")
    lowest = min(((n, r["min_spearman"]) for n, r in results.items() if r["min_spearman"] is not None), key=lambda t: t[1], default=None)
    if lowest:
        headline += f", lowest rho {lowest[1]:.4f} ({lowest[0]})"
    if over or drift:
        click.echo(headline + "".join(f"; {what}: " + "; ".join(f"{n}: {', '.join(ms)}" for n, ms in found.items())
                                      for what, found in (("OVER BUDGET", over), ("SCORE DRIFT", drift)) if found))
        sys.exit(EXIT_OVER_BUDGET)
    click.echo(headline + "; all within budget")
