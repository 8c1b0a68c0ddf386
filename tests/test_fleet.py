"""Fleet integration against the real thing: the Prometheus endpoint is scraped over HTTP and
MQTT goes through a real mosquitto broker (tests/mqtt_broker.py). No mocks."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.fleet import FanoutSink, FleetError, MetricsSink, MqttConfig, MqttPublisher, MqttSink
from mtad.edge_runtime.mic import run_microphone
from tests.mic_sim import ListSink, SimulatedPyAudio
from tests.mqtt_broker import Mosquitto, Subscriber, free_port

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
BASE = {"backend": "onnxruntime", "precision": "fp32"}




@pytest.fixture(scope="module")
def fan_audio(tiny_synth):
    return np.concatenate([load_audio(p) for p in sorted((tiny_synth / "fan" / "test").glob("*id_00*.wav"))[:3]])


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


def scrape(port: int) -> dict:
    """``{(name, frozenset(labels)): value}`` from the live endpoint, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_endpoint_matches_the_lines(scorer, fan_audio):
    lines = ListSink()
    metrics = MetricsSink(0, "127.0.0.1", **BASE)
    try:
        pa = SimulatedPyAudio(np.concatenate([fan_audio, np.zeros(5 * 16000, np.float32)]), overflow_every=5)
        run_microphone(scorer, "fan/id_00", FanoutSink([lines, metrics]), BASE, window_s=3.0, hop_s=1.0, heartbeat_s=0.05,
                       pyaudio_module=pa, log=lambda m: None)
        got = scrape(metrics.port)
    finally:
        metrics.close()
    windows = [r for r in lines.lines if r.get("type") == "window"]
    scored = [r for r in windows if "error" not in r]
    lab = frozenset({"machine": "fan/id_00", **BASE}.items())
    assert len(scored) == 9 and len(windows) - len(scored) == 3  # 9 s of sound, then 5 s of a dead microphone
    assert got[("mtad_windows_scored_total", lab)] == 9
    assert got[("mtad_window_errors_total", lab)] == 3
    assert got[("mtad_anomalies_total", lab)] == sum(r["anomaly"] for r in scored)
    assert got[("mtad_last_score", lab)] == pytest.approx(scored[-1]["score"])
    assert got[("mtad_threshold", lab)] == pytest.approx(scored[-1]["threshold"])
    assert got[("mtad_input_overflows_total", lab)] == windows[-1]["input_overflows"] == pa.streams[0].chunks // 5 > 0
    assert got[("mtad_dropped_samples_total", lab)] == 0
    assert got[("mtad_latency_seconds_count", lab)] == 9
    assert got[("mtad_latency_seconds_sum", lab)] == pytest.approx(sum(r["latency_ms"] for r in scored) / 1000)
    assert time.time() - got[("mtad_last_heartbeat_timestamp_seconds", lab)] < 30


def test_metrics_port_in_use_is_one_clear_error():
    m = MetricsSink(0, "127.0.0.1")
    try:
        with pytest.raises(FleetError, match=f"--metrics-port {m.port}: cannot listen on 127.0.0.1:{m.port}"):
            MetricsSink(m.port, "127.0.0.1")
    finally:
        m.close()


def test_every_line_and_alert_reaches_the_broker(broker, scorer, fan_audio):
    sub = Subscriber(broker.port, "mtad/#")
    pub = MqttPublisher(MqttConfig.from_url(f"mqtt://127.0.0.1:{broker.port}/mtad", client_id="edge-1"), log=lambda m: None)
    lines = ListSink()
    sink = FanoutSink([lines, MqttSink(pub)])
    run_microphone(scorer, "fan/id_00", sink, BASE, window_s=3.0, hop_s=0.5, heartbeat_s=60, pyaudio_module=SimulatedPyAudio(fan_audio),
                   log=lambda m: None)
    # and two records with the anomaly flag, as a real alert would be
    for score in (9.0, 11.0):
        sink.write({"type": "window", "machine": "fan/id_00", "score": score, "threshold": 5.0, "anomaly": True, **BASE})
    sink.close()
    windows = [r for r in lines.lines if r.get("type") == "window"]
    got = [json.loads(p) for p in sub.wait_for("fan/id_00/score", len(windows), 10)]
    assert len(windows) == 1 + 12 + 2
    assert [g["score"] for g in got] == [r["score"] for r in windows]
    assert sorted(g["seq"] for g in got) == list(range(1, len(windows) + 1))
    alerts = [json.loads(p) for p in sub.wait_for("fan/id_00/alert", 2, 5)]
    assert len(alerts) == sum(r["anomaly"] for r in windows) >= 2 and alerts[-1]["score"] == 11.0
    status = [json.loads(p) for p in sub.wait_for("status/edge-1", 2, 5)]  # the offline notice may still be in flight
    assert [s["state"] for s in status] == ["online", "offline"] and status[-1]["reason"] == "stopped"
    assert pub.dropped == 0 and pub.pending == 0
    sub.close()


DEAD_DEVICE = r"""
import sys, time
from mtad.edge_runtime.fleet import MqttConfig, MqttPublisher
pub = MqttPublisher(MqttConfig.from_url(sys.argv[1], client_id="edge-dead"), log=print)
while not pub.connected:
    time.sleep(0.05)
print("up", flush=True)
time.sleep(60)
"""


def test_last_will_marks_a_dead_device_offline(broker):
    sub = Subscriber(broker.port, "mtad/status/#")
    p = subprocess.Popen([sys.executable, "-c", DEAD_DEVICE, f"mqtt://127.0.0.1:{broker.port}/mtad"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip().endswith("queued)") and p.stdout.readline().strip() == "up"
        os.kill(p.pid, signal.SIGKILL)  # the device dies without a word
        p.wait(10)
        status = [json.loads(m) for m in sub.wait_for("status/edge-dead", 2, 10)]
        assert [s["state"] for s in status] == ["online", "offline"] and status[-1]["reason"] == "connection lost"
    finally:
        if p.poll() is None:
            p.kill()
        sub.close()


@pytest.fixture
def tls_broker(tmp_path):
    """mosquitto with TLS (a throwaway CA) and a password file."""
    d = tmp_path / "tls"
    d.mkdir()

    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=mtad test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "2",
        "-extfile", "san.ext")
    os.chmod(d / "server.key", 0o644)
    passwd = d / "passwd"
    passwd_bin = __import__("shutil").which("mosquitto_passwd", path=os.environ.get("PATH", "") + ":/usr/bin:/usr/sbin")
    if not passwd_bin:
        pytest.skip("mosquitto_passwd not installed (comes with the mosquitto package)")
    subprocess.run([passwd_bin, "-c", "-b", str(passwd), "edge", "s3cret"], check=True, capture_output=True)
    b = Mosquitto(tmp_path / "broker", password_file=passwd, tls={"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"})
    b.start()
    yield b, d / "ca.crt"
    b.stop()


def test_credentials_and_tls(tls_broker):
    broker, ca = tls_broker
    sub = Subscriber(broker.port, "mtad/#", username="edge", password="s3cret", ca=str(ca))
    url = f"mqtts://edge@localhost:{broker.port}/mtad"
    logs = []
    pub = MqttPublisher(MqttConfig.from_url(url, password="s3cret", ca_file=str(ca), client_id="edge-tls"), log=logs.append)
    MqttSink(pub).write({"type": "window", "machine": "pump/id_00", "score": 1.5, "threshold": 2.0, "anomaly": False})
    pub.close()
    assert [json.loads(p)["score"] for p in sub.wait_for("pump/id_00/score", 1, 10)] == [1.5]
    assert any("connected to localhost" in m for m in logs)
    # a wrong password is refused by the broker, said in a line, and nothing is delivered
    logs.clear()
    bad = MqttPublisher(MqttConfig.from_url(url, password="wrong", ca_file=str(ca), client_id="edge-bad", queue_size=5), log=logs.append)
    deadline = time.monotonic() + 10
    while not any("refused the connection" in m for m in logs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("refused the connection" in m and "Not authorized" in m for m in logs), logs
    assert not bad.connected
    bad.close(timeout=0.1)
    sub.close()


def test_mqtt_url_and_missing_extra(monkeypatch):
    c = MqttConfig.from_url("mqtts://u%40x:p@broker.local/site/a")
    assert (c.host, c.port, c.prefix, c.username, c.password, c.tls) == ("broker.local", 8883, "site/a", "u@x", "p", True)
    assert MqttConfig.from_url("mqtt://h").prefix == "mtad"
    for bad, msg in [("http://h:1883/x", "takes mqtt://"), ("mqtt://h:99999/x", "bad port"), ("mqtt://h/a/#", "wildcards")]:
        with pytest.raises(FleetError, match=msg):
            MqttConfig.from_url(bad)
    with pytest.raises(FleetError, match="--mqtt-queue must be between 1 and 60000"):
        MqttConfig.from_url("mqtt://h", queue_size=0)
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    with pytest.raises(FleetError, match=r"--mqtt needs the fleet extra: pip install 'mtad\[fleet\]'"):
        MqttPublisher(MqttConfig.from_url("mqtt://h"))
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(FleetError, match=r"--metrics-port needs the fleet extra"):
        MetricsSink(0)


CLI_DRIVER = r"""
import sys, numpy as np
import mtad.edge_runtime.mic as mic
from tests.mic_sim import ListSink, SimulatedPyAudio
t = np.arange(16000 * 12) / 16000
mic.import_pyaudio = lambda: SimulatedPyAudio((0.1 * np.sin(2 * np.pi * 220 * t) + 0.02 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32),
                                              speed=2.0, overflow_every=9)
from mtad.edge_runtime.cli import main
main(sys.argv[1:], prog_name="mtad-edge")
"""


def test_cli_metrics_and_mqtt_end_to_end(broker, tiny_bundle, tmp_path):
    """`mtad-edge --mic --metrics-port P --mqtt mqtt://127.0.0.1:B/mtad` in its own process."""
    sub = Subscriber(broker.port, "mtad/#")
    port, out = free_port(), tmp_path / "out.jsonl"
    p = subprocess.Popen([sys.executable, "-c", CLI_DRIVER, "--bundle", str(tiny_bundle), "--mic", "--machine", "fan/id_00",
                          "--window", "3", "--hop", "1", "--heartbeat", "1", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1",
                          "--mqtt", f"mqtt://127.0.0.1:{broker.port}/mtad", "--mqtt-client-id", "edge-cli", "--out", str(out)],
                         cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        live = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            try:
                live = scrape(port)
                if any(k[0] == "mtad_windows_scored_total" and v >= 3 for k, v in live.items()):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        stderr = p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    assert live is not None and any(k[0] == "mtad_windows_scored_total" and v >= 3 for k, v in live.items()), live
    assert live[("mtad_mqtt_connected", frozenset())] == 1.0
    windows = [json.loads(x) for x in out.read_text().splitlines() if '"window"' in x]
    assert len(windows) == 1 + 9  # 12 s of audio, 3 s window, 1 s hop
    got = sub.wait_for("fan/id_00/score", len(windows), 10)
    assert len(got) == len(windows) and len(sub.topics("fan/id_00/heartbeat")) >= 2
    alerts = sum(w["anomaly"] for w in windows)
    assert len(sub.topics("fan/id_00/alert")) == alerts
    data = len(windows) + alerts + len(sub.topics("fan/id_00/heartbeat"))  # the status messages are not counted
    assert f"mqtt: {data} message(s) acknowledged, 0 dropped (queue full)" in stderr
    sub.close()


BLOCK_FLEET = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("paho", "prometheus_client"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
import importlib, pkgutil
import mtad.edge_runtime as er
for m in pkgutil.iter_modules(er.__path__):
    importlib.import_module("mtad.edge_runtime." + m.name)
assert not any(n.split(".")[0] in ("paho", "prometheus_client") for n in sys.modules)
from mtad.edge_runtime.cli import main
main(sys.argv[1:], prog_name="mtad-edge")
"""


@pytest.mark.parametrize("flag", [["--mqtt", "mqtt://127.0.0.1:1/x"], ["--metrics-port", "0"]])
def test_base_install_without_the_fleet_extra(tiny_bundle, tiny_synth, flag):
    """Nothing imports paho or prometheus_client until asked; asked without them: one line, exit 1."""
    clip = sorted((tiny_synth / "fan" / "test").glob("*.wav"))[0]
    p = subprocess.run([sys.executable, "-c", BLOCK_FLEET, "--bundle", str(tiny_bundle), *flag, str(clip)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {flag[0]} needs the fleet extra: pip install 'mtad[fleet]'")
    assert "Traceback" not in p.stderr
