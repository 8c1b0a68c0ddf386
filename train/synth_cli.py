"""``mtad-synth``: write a synthetic machine-sound set in the DCASE2020 Task 2 layout."""

from __future__ import annotations

from pathlib import Path

import click

from mtad.edge_runtime.allocator import keep_freed_memory
from mtad.edge_runtime.cli_common import parse_csv, report_errors
from mtad.edge_runtime.errors import ConfigError

from .synth import MACHINE_TYPES, SynthConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--types", default=",".join(MACHINE_TYPES), show_default=True, help="Comma-separated machine types.")
@click.option("--ids", default=SynthConfig.ids, show_default=True, help="Machine ids per type (1-4).")
@click.option("--train", "n_train", default=SynthConfig.train, show_default=True, help="Normal training clips per id.")
@click.option("--test", "n_test", default=SynthConfig.test, show_default=True, help="Test clips per id, each of normal and anomaly.")
@click.option("--val", "n_val", default=SynthConfig.val, show_default=True,
              help="Labelled validation clips per id, each of normal and anomaly, in OUT/<type>/val/ (mtad-export --accuracy-budget selects on them).")
@click.option("--seconds", default=SynthConfig.seconds, show_default=True, help="Clip length.")
@click.option("--severity", default=SynthConfig.severity, show_default=True, help="Fault strength (1 = default difficulty).")
@click.option("--snr", default="0,6", show_default=True, help="Machine-to-background SNR range in dB, 'lo,hi'.")
@click.option("--seed", default=SynthConfig.seed, show_default=True)
@click.option("--workers", default=0, help="Processes (0 = all cores).")
@report_errors
def main(out, types, ids, n_train, n_test, n_val, seconds, severity, snr, seed, workers):
    """Synthesise machine sounds into OUT/<type>/{train,test}/...wav (and val/ with --val; 16 kHz mono 16-bit)."""
    keep_freed_memory()
    from .synth_writer import write_dataset

    try:
        lo, hi = (float(v) for v in snr.split(","))
    except ValueError:
        raise ConfigError(f"--snr must be 'lo,hi' in dB, got {snr!r}") from None
    type_list = tuple(parse_csv(types))
    unknown = [t for t in type_list if t not in MACHINE_TYPES]
    if unknown:
        raise ConfigError(f"unknown machine type(s) {', '.join(unknown)}; choose from {', '.join(MACHINE_TYPES)}")
    if seconds < 1 or n_train < 1 or n_test < 1 or n_val < 0 or severity < 0 or lo > hi:
        raise ConfigError("need --seconds >= 1, --train >= 1, --test >= 1, --val >= 0, --severity >= 0 and lo <= hi for --snr")
    if not 1 <= ids <= 4:
        raise ConfigError("--ids must be between 1 and 4")
    cfg = SynthConfig(types=type_list, ids=ids, train=n_train, test=n_test, val=n_val, seconds=seconds, seed=seed, severity=severity, snr_db=(lo, hi))
    jobs = write_dataset(cfg, out, workers=workers or None)
    n_val_clips = sum(j.split == "val" for j in jobs)
    click.echo(f"wrote {len(jobs)} clips for {len(type_list)} machine types to {out}"
               + (f" ({n_val_clips} of them labelled validation clips in <type>/val/)" if n_val_clips else ""))
