"""``mtad-export``: a trained run -> an edge bundle (FP32 ONNX, optional FP16/INT8, TensorRT engines)."""

from __future__ import annotations

from pathlib import Path

import click

from mtad.edge_runtime.allocator import keep_freed_memory
from mtad.edge_runtime.cli_common import parse_csv, report_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory from mtad-train.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle directory to create.")
@click.option("--fp16", is_flag=True, help="Add an FP16 ONNX variant (float32 inputs/outputs).")
@click.option("--int8", is_flag=True, help="Add an INT8 Q/DQ ONNX variant (needs --calib-data).")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Data root whose training normals calibrate INT8.")
@click.option("--calib-windows", default=512, show_default=True, help="Calibration windows, spread over machine types and ids.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--int8-reduce-range", is_flag=True, help="7-bit INT8 weights: fast fused kernels on CPUs without VNNI (costs accuracy).")
@click.option("--int8-exclude", help="Comma-separated ONNX node names kept in float.")
@click.option("--accuracy-budget", "accuracy_budget_text",
              help="Keep the worst layers in float32 until max |dAUC| per machine on the labelled validation clips (--val-data) is "
                   "within budget: a number (INT8) or 'fp16=0.005,int8=0.01'. Without validation clips: until score drift against "
                   "FP32 on held-out training normals is within mtad-parity's score budgets. Never on test clips.")
@click.option("--val-data", type=click.Path(path_type=Path),
              help="Labelled validation clips for --accuracy-budget: a data root whose <type>/val/ clips (or, if it has none, "
                   "<type>/test/ clips) are used. Default: --calib-data's <type>/val/ split, if it has one (mtad-synth --val N).")
@click.option("--int8-floor", default=0.80, show_default=True, type=click.FloatRange(0, 1),
              help="Refuse to label a variant int8 unless at least this fraction of the model's MACs run quantised.")
@click.option("--reference-clips", default=8, show_default=True, type=click.IntRange(1),
              help="Normal and anomalous test clips per machine shipped in the bundle for on-device parity (each ~2 s of int16 audio).")
@click.option("--engine", is_flag=True, help="Also build TensorRT engines for this machine's GPU.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--quiet", is_flag=True)
@report_errors
def main(run_dir, out, fp16, int8, calib_data, calib_windows, calib_method, int8_reduce_range, int8_exclude, accuracy_budget_text,
         val_data, int8_floor, reference_clips, engine, force, quiet):
    """Export RUN to a bundle the edge runtime loads (mtad-edge --bundle OUT)."""
    keep_freed_memory()
    from mtad.edge_runtime.constants import parse_budgets
    from mtad.edge_runtime.runners import import_onnxruntime

    from .bundle_writer import export_bundle

    accuracy_budget = parse_budgets(accuracy_budget_text, "--accuracy-budget", ("fp16", "int8"), bare="int8") or None
    import_onnxruntime()  # the [cpu] or [gpu] extra: one line if neither is installed
    if accuracy_budget:
        from .accuracy_control import require_polygraphy

        require_polygraphy()  # before minutes of work, as one line
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    manifest = export_bundle(run_dir, out, fp16, int8, calib_data, calib_windows, calib_method, int8_reduce_range,
                             parse_csv(int8_exclude), accuracy_budget, engine, force, progress=not quiet, log=log, int8_floor=int8_floor,
                             reference_clips=reference_clips, val_data=val_data, notice=lambda m: click.echo(m, err=True))
    from .data_sets import describe

    sets = manifest["data_sets"]
    reference = (f"; reference set {manifest['reference']['n_clips']} clips, {manifest['reference']['bytes'] / 1e6:.1f} MB"
                 if manifest.get("reference") else "")
    if not manifest["variants"]:
        click.echo(f"bundle {out}: model-free ({'+'.join(manifest['scoring']['components'])}): no network, "
                   f"statistics {(out / 'stats.npz').stat().st_size / 1e6:.2f} MB{reference}")
        return
    sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in manifest["sizes_bytes"].items())
    worst = max(manifest["export_check"]["variants"].items(), key=lambda kv: kv[1]["logits"]["max_abs"])
    click.echo(f"bundle {out}: {sizes}; worst logits error {worst[1]['logits']['max_abs']:.2e} ({worst[0]}), "
               f"argmax agreement {min(c['argmax_agreement'] for c in manifest['export_check']['variants'].values()):.1%}"
               + (f"; int8: {manifest['variants']['int8']['quantized_mac_fraction']:.1%} of MACs quantised" if int8 else "")
               + reference
               + (f"; accuracy control on {describe(sets['accuracy_control'])}"
                  + (" (score drift vs FP32: no labelled validation set)" if sets["accuracy_control"]["kind"] == "normals_drift" else "")
                  if sets.get("accuracy_control") else ""))
