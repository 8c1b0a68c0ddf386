"""``mtad-edge``: score WAV files or a live microphone on the device; ``bench``; ``build-engine``;
``enroll`` and ``rollback``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .allocator import keep_freed_memory
from .cli_common import report_errors

EXIT_INPUTS_FAILED = 3  # some files could not be scored; the others were


class _DefaultToScore(click.Group):
    """``mtad-edge [OPTIONS] PATH...`` runs ``score``; ``bench``/``build-engine`` are subcommands."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["score", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToScore, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Torch-free anomaly scoring on the device. Default command: score (files or --mic)."""
    keep_freed_memory()


class JsonlSink:
    """One JSON object per line to stdout or an appended file, flushed each line."""

    def __init__(self, path: Path | None):
        self.fh = open(path, "a", buffering=1) if path else sys.stdout

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()


def iter_wavs(paths):
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix.lower() == ".wav")
        else:
            yield p


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option("--machine", help="TYPE/ID (e.g. fan/id_00); default: parsed from DCASE-style paths.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--threads", default=0, help="ONNX Runtime intra-op threads (0 = ORT default).")
@click.option("--channel", default="0", show_default=True, help="Channel of multichannel input, or 'mean'.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Append JSON lines here instead of stdout.")
@click.option("--mic", is_flag=True, help="Score a live microphone instead of files.")
@click.option("--input-device", "device_index", type=int, help="--mic: input device index (see --list-devices).")
@click.option("--device", "device_deprecated", type=int, hidden=True)  # deprecated alias of --input-device, for one release
@click.option("--list-devices", is_flag=True, help="List audio input devices and exit.")
@click.option("--window", "window_s", default=10.0, show_default=True, help="--mic: seconds of audio per score (the model's shortest input up to 60).")
@click.option("--hop", "hop_s", default=1.0, show_default=True, help="--mic: seconds between scores (0.01 up to --window).")
@click.option("--heartbeat", "heartbeat_s", default=60.0, show_default=True, help="--mic: seconds between heartbeat lines.")
@click.option("--duration", "duration_s", type=float, help="--mic: stop after this many seconds.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus metrics on this port (needs mtad[fleet]).")
@click.option("--metrics-addr", default="0.0.0.0", show_default=True, help="Address the metrics endpoint listens on.")
@click.option("--mqtt", "mqtt_url", metavar="URL", help="Publish every line at QoS 1 to mqtt[s]://[user[:pass]@]host[:port]/topic-prefix (needs mtad[fleet]).")
@click.option("--mqtt-username", help="MQTT user name (or in the URL).")
@click.option("--mqtt-password", envvar="MTAD_MQTT_PASSWORD", help="MQTT password (better: the MTAD_MQTT_PASSWORD variable).")
@click.option("--mqtt-ca", type=click.Path(dir_okay=False, exists=True), help="CA file to verify the broker (turns on TLS).")
@click.option("--mqtt-cert", type=click.Path(dir_okay=False, exists=True), help="Client certificate for brokers that require one (TLS).")
@click.option("--mqtt-key", type=click.Path(dir_okay=False, exists=True), help="Key of --mqtt-cert.")
@click.option("--mqtt-client-id", help="MQTT client id (default mtad-HOSTNAME[-TYPE-ID]).")
@click.option("--mqtt-queue", "mqtt_queue", type=int, default=10000, show_default=True,
              help="Messages held while the broker is unreachable; beyond this, new ones are dropped and counted.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@report_errors
def score(bundle_dir, machine, backend, precision, threads, channel, out_path, mic, device_index, device_deprecated, list_devices, window_s,
          hop_s, heartbeat_s, duration_s, metrics_port, metrics_addr, mqtt_url, mqtt_username, mqtt_password, mqtt_ca, mqtt_cert,
          mqtt_key, mqtt_client_id, mqtt_queue, paths):
    """Score WAV files and folders (PATH...) or the microphone (--mic); one JSON line per clip/window."""
    from .bundle import load_bundle
    from .errors import MtadError
    from .pipeline import EdgeScorer, choose_runner

    if device_deprecated is not None:
        click.echo("warning: --device is deprecated for the audio input; use --input-device (--device goes in the next release)", err=True)
        if device_index is not None and device_index != device_deprecated:
            raise click.UsageError("--device and --input-device disagree; give only --input-device")
        device_index = device_deprecated

    if list_devices:
        from .mic import list_input_devices

        devices = list_input_devices()
        if not devices:
            raise MtadError("no audio input devices found (is a microphone plugged in, and is this user in the 'audio' group?)")
        for d in devices:
            click.echo(f"{d['index']}: {d['name']} ({d['channels']} ch, {d['rate']:.0f} Hz)")
        return
    if not mic and not paths:
        raise click.UsageError("give WAV files/folders to score, or --mic")
    if mic and not machine:
        raise click.UsageError("--mic needs --machine TYPE/ID")
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    bundle = load_bundle(bundle_dir)
    if mic:
        from .mic import check_window
        from .pipeline import min_window_seconds

        check_window(window_s, hop_s, min_window_seconds(bundle), heartbeat_s)  # before the runner is built
    runner = choose_runner(bundle, backend, precision, threads, log)
    scorer = EdgeScorer(bundle, runner)
    base = {"backend": runner.backend, "precision": runner.precision}
    sink = JsonlSink(out_path)
    if metrics_port is not None or mqtt_url:
        sink = _fleet_sink(sink, base, machine, log, metrics_port, metrics_addr, mqtt_url, mqtt_username, mqtt_password, mqtt_ca,
                           mqtt_cert, mqtt_key, mqtt_client_id, mqtt_queue)
    try:
        if mic:
            from .mic import run_microphone

            summary = run_microphone(scorer, machine, sink, base, device_index, window_s, hop_s, heartbeat_s, duration_s, log)
            log(summary)
            return
        if channel != "mean" and not channel.isdigit():
            raise click.UsageError(f"--channel takes a channel number or 'mean', got {channel!r}")
        ch = "mean" if channel == "mean" else int(channel)
        n_ok = n_bad = n_anom = 0
        for path in iter_wavs(paths):
            try:
                r = scorer.score_file(path, machine, ch)
            except MtadError as exc:
                n_bad += 1
                log(f"error: {exc}")
                continue
            n_ok += 1
            n_anom += r.anomaly
            sink.write({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "file": str(path), **r.to_json(), **base, "dropped_samples": 0})
        log(f"scored {n_ok} clip(s): {n_anom} anomalous" + (f"; {n_bad} could not be scored" if n_bad else ""))
        if n_bad:
            sys.exit(EXIT_INPUTS_FAILED)
    finally:
        sink.close()


def _fleet_sink(jsonl, base, machine, log, metrics_port, metrics_addr, mqtt_url, username, password, ca, cert, key, client_id, queue):
    """The JSON-lines sink plus the Prometheus endpoint and/or the MQTT publisher."""
    import socket

    from .fleet import FanoutSink, MetricsSink, MqttConfig, MqttPublisher, MqttSink

    sinks = [jsonl]
    try:
        metrics = None
        if metrics_port is not None:
            metrics = MetricsSink(metrics_port, metrics_addr, **base)
            sinks.append(metrics)
            log(f"metrics: http://{metrics_addr}:{metrics.port}/metrics")
        if mqtt_url:
            default_id = f"mtad-{socket.gethostname()}" + (f"-{machine.replace('/', '-')}" if machine else "")
            cfg = MqttConfig.from_url(mqtt_url, username=username, password=password, ca_file=ca, cert_file=cert, key_file=key,
                                      client_id=client_id or default_id, queue_size=queue)
            publisher = MqttPublisher(cfg, log)
            sinks.append(MqttSink(publisher))
            if metrics is not None:
                metrics.attach_mqtt(publisher)
    except BaseException:
        FanoutSink(sinks).close()
        raise
    return FanoutSink(sinks)


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option("--clip", type=click.Path(dir_okay=False, path_type=Path), help="10 s WAV to time (default: 10 s of seeded noise).")
@click.option("--machine", help="TYPE/ID of the clip (default: parsed from its name, else the bundle's first machine).")
@click.option("--repeats", default=20, show_default=True)
@click.option("--threads", default=1, show_default=True, help="Threads for every backend (1 = one CPU core).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@report_errors
def bench(bundle_dir, clip, machine, repeats, threads, json_path):
    """Time every variant in the bundle on the same clip, each in its own process.

    The comparison with PyTorch eager lives in benchmarks/edge_bench.py (needs torch)."""
    import tempfile

    import numpy as np
    import soundfile as sf

    from .bench import format_results, machine_description, run_bench
    from .bundle import load_bundle
    from .dataset import parse_machine_from_path

    bundle = load_bundle(bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if clip is None:
            clip = Path(tmp) / "noise.wav"
            sf.write(clip, (0.05 * np.random.default_rng(0).standard_normal(160000)).astype(np.float32), 16000)
        if machine is None:
            parsed = parse_machine_from_path(clip)
            machine = "/".join(parsed) if parsed and "/".join(parsed) in bundle.class_map else bundle.class_map[0]
        results = run_bench(bundle_dir, clip, machine, repeats, threads, log=lambda m: click.echo(m, err=True))
    click.echo(format_results(results, machine_description() + f", {threads} thread(s)"))
    if json_path:
        from .atomic import atomic_write

        with atomic_write(json_path, "w") as f:
            f.write(json.dumps({"machine": machine_description(), "threads": threads, "results": results}, indent=1))


@main.command("build-engine")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp16", "int8", "fp32"]), help="Default: every ONNX variant.")
@click.option("--max-batch", default=32, show_default=True, help="Largest batch of windows per engine call (the runner chunks longer clips).")
@report_errors
def build_engine_cmd(bundle_dir, precisions, max_batch):
    """Build TensorRT engines for this device's GPU from the bundle's ONNX variants.

    Engines go to BUNDLE/engines/ with a key file; the manifest is not rewritten (its hashes
    cover what was exported), so engines are found by their key files.
    """
    from .bundle import load_bundle
    from .errors import ConfigError
    from .tensorrt_build import build_engine
    from .tensorrt_runner import require_tensorrt

    bundle = load_bundle(bundle_dir)
    if not bundle.stats.needs_model:
        raise ConfigError(f"{bundle_dir}: the bundle's score ({', '.join(bundle.stats.components)}) is model-free: it carries no network, "
                          "so there is no engine to build (it runs as it is)")
    require_tensorrt()
    (bundle.root / "engines").mkdir(exist_ok=True)
    for v in bundle.variants.values():
        if v.kind != "onnx" or (precisions and v.precision not in precisions):
            continue
        engine = bundle.root / "engines" / f"{v.precision}.engine"
        build_engine(bundle.root / v.file, engine, v.precision, bundle.window, int(bundle.manifest["model_config"]["n_mels"]), max_batch,
                     log=lambda m: click.echo(m, err=True))  # written atomically, with its key file
        click.echo(f"engine: {engine} (batches of up to {max_batch} windows per call; longer clips run in chunks)")


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option("--machine", required=True, help="TYPE/ID to enroll, e.g. fan/id_07 (the type must be one the model was trained on).")
@click.option("--seconds-per-clip", "segment_seconds", default=10.0, show_default=True, help="Enrollment audio is cut into clips of this length.")
@click.option("--mic", is_flag=True, help="Record the enrollment audio from the microphone first (then enroll from those files).")
@click.option("--minutes", default=5.0, show_default=True, help="--mic: minutes of normal operation to record.")
@click.option("--input-device", "device_index", type=int, help="--mic: input device index (see mtad-edge --list-devices).")
@click.option("--record-dir", type=click.Path(file_okay=False, path_type=Path),
              help="--mic: where the recording goes (default ./mtad-enroll-TYPE-ID-TIME); enroll again from it with PATH.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@report_errors
def enroll(bundle_dir, machine, segment_seconds, mic, minutes, device_index, record_dir, paths):
    """Bring a new machine under watch from recordings (WAV files or folders) of its NORMAL sound.

    Fits the machine's scoring statistics and threshold on the device (no torch, no retraining)
    and writes them as a new revision of the bundle; `mtad-edge rollback` restores the previous one.
    """
    from .enroll import enroll as enroll_machine
    from .scoring import describe_threshold_ranges

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if mic == bool(paths):
        raise click.UsageError("give either WAV files/folders of normal sound, or --mic (not both)")
    if mic:
        from .bundle import load_bundle
        from .enroll import check_enrollable
        from .mic import record_microphone

        check_enrollable(load_bundle(bundle_dir), machine)  # before minutes of recording, not after
        record_dir = record_dir or Path(f"mtad-enroll-{machine.replace('/', '-')}-{time.strftime('%Y%m%dT%H%M%S')}")
        paths = record_microphone(record_dir, minutes * 60, device_index, log=log)
        log(f"recorded {len(paths)} file(s) into {record_dir}/ (kept: enroll again from it if needed)")
    files = list(iter_wavs(paths))
    if not files:
        raise click.UsageError("no WAV files found in the given paths")
    r = enroll_machine(bundle_dir, machine, files, segment_seconds, log=log)
    click.echo(f"enrolled {r.machine} from {r.n_clips} clip(s) ({r.seconds:.0f} s of audio) with {', '.join(r.components)}: "
               f"threshold {r.threshold:.3f}; bundle revision {r.revision} (mtad-edge rollback undoes it)")
    log(describe_threshold_ranges({r.machine: r.n_clips}, r.false_alarm_rate))


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@report_errors
def rollback(bundle_dir):
    """Restore the bundle's previous revision (undo the last enrollment)."""
    from .enroll import rollback as rollback_bundle

    click.echo(f"rolled back {bundle_dir} to revision {rollback_bundle(bundle_dir)}")
