"""Fault injection: the MQTT broker (a real mosquitto) is stopped for a while during a simulated
microphone stream, then restarted. Within the queue bound nothing is lost and the lines
published equal the windows scored; beyond it, every drop is counted, said in a line and
exported as a metric."""

import json
import threading
import time

import numpy as np

from mtad.edge_runtime.fleet import FanoutSink, MetricsSink, MqttConfig, MqttPublisher, MqttSink
from mtad.edge_runtime.mic import run_microphone
from tests.faults.conftest import TALLY
from tests.mic_sim import ListSink, SimulatedPyAudio
from tests.mqtt_broker import Mosquitto, Subscriber


def _outage(broker, lines, down_after, up_after, log):
    """Stop the broker once ``down_after`` windows were scored, restart it at ``up_after``."""
    def run():
        while len(lines.windows()) < down_after:
            time.sleep(0.01)
        broker.stop()
        log.append(("down", len(lines.windows()), time.monotonic()))
        while len(lines.windows()) < up_after:
            time.sleep(0.01)
        broker.start()
        log.append(("up", len(lines.windows()), time.monotonic()))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _stream(seconds):
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * np.sin(2 * np.pi * 220 * t) + 0.02 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32)


def _received(sub, suffix):
    """Unique lines by their sequence number (QoS 1 is at-least-once), and the repeat count."""
    got = [json.loads(p) for p in sub.topics(suffix)]
    return {g["seq"]: g for g in got}, len(got) - len({g["seq"] for g in got})


def _score_through_outage(scorer, broker, pub, lines, seconds, down_after, up_after, events) -> None:
    """Score ``seconds`` of simulated microphone audio (3 s windows every 0.5 s, at 3x real time)
    into ``lines`` and MQTT, while the broker stops after ``down_after`` windows and restarts
    after ``up_after``."""
    outage = _outage(broker, lines, down_after=down_after, up_after=up_after, log=events)
    run_microphone(scorer, "fan/id_00", FanoutSink([lines, MqttSink(pub)]), {}, window_s=3.0, hop_s=0.5, heartbeat_s=60,
                   pyaudio_module=SimulatedPyAudio(_stream(seconds), speed=3.0), log=lambda m: None)
    outage.join(30)


def test_nothing_lost_within_the_queue_bound(scorer, tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "mtad/#")  # persistent session: the broker keeps its messages across the restart
    logs, events = [], []
    pub = MqttPublisher(MqttConfig.from_url(f"mqtt://127.0.0.1:{broker.port}/mtad", client_id="edge-outage"), log=logs.append)
    lines = ListSink()
    try:
        # 30 s of audio at 3x real time, a window every 0.5 s of audio: ~6 s of wall time without a broker
        _score_through_outage(scorer, broker, pub, lines, seconds=30, down_after=8, up_after=30, events=events)
        pub.close(timeout=30)
        windows = lines.windows()
        scores, repeats = _received(sub, "fan/id_00/score")
        deadline = time.monotonic() + 10
        while len(scores) < len(windows) and time.monotonic() < deadline:
            time.sleep(0.1)
            scores, repeats = _received(sub, "fan/id_00/score")
    finally:
        sub.close()
        broker.stop()
    down, up = events
    assert len(windows) == 1 + 54 and up[1] - down[1] >= 20  # 20+ windows scored while the broker was away
    assert sorted(scores) == list(range(1, len(windows) + 1))
    assert [scores[s]["score"] for s in sorted(scores)] == [r["score"] for r in windows]  # every line, in order
    assert pub.dropped == 0 and pub.pending == 0
    assert any("disconnected" in m for m in logs) and sum("connected to" in m for m in logs) >= 2
    TALLY["broker outages survived"] += 1
    TALLY["lines lost within the queue bound"] += len(windows) - len(scores)
    TALLY["lines published during outage test"] += len(scores)
    TALLY["windows scored during outage test"] += len(windows)
    TALLY["QoS 1 repeats seen"] += repeats


def test_beyond_the_bound_drops_are_counted_reported_and_exported(scorer, tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "mtad/#")
    logs, events = [], []
    pub = MqttPublisher(MqttConfig.from_url(f"mqtt://127.0.0.1:{broker.port}/mtad", client_id="edge-small", queue_size=5), log=logs.append)
    metrics = MetricsSink(0, "127.0.0.1")
    metrics.attach_mqtt(pub)
    lines = ListSink()
    try:
        _score_through_outage(scorer, broker, pub, lines, seconds=20, down_after=5, up_after=25, events=events)
        deadline = time.monotonic() + 30
        while pub.pending and time.monotonic() < deadline:
            time.sleep(0.1)
        from tests.test_fleet import scrape

        got = scrape(metrics.port)
        pub.close(timeout=10)
        time.sleep(0.5)
        windows = lines.windows()
        scores, _ = _received(sub, "fan/id_00/score")
        alerts, _ = _received(sub, "fan/id_00/alert")
    finally:
        metrics.close()
        sub.close()
        broker.stop()
    published = len(windows) + sum(bool(r.get("anomaly")) for r in windows)  # a line per window, plus an alert per anomaly
    assert pub.dropped > 0
    assert len(scores) + len(alerts) + pub.dropped == published  # every message delivered or counted as dropped
    assert got[("mtad_mqtt_dropped_total", frozenset())] == pub.dropped
    assert any("queue full (5 messages waiting" in m for m in logs)
    assert any(f"{pub.dropped} dropped (queue full)" in m for m in logs)
    TALLY["mqtt drops counted beyond a 5-message bound"] += pub.dropped
