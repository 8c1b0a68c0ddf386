"""Fleet integration: a Prometheus endpoint and MQTT publishing, as sinks of the output lines.

Both read the same records the JSON-lines output gets (window, bad window, heartbeat), so a
device reports the same thing to every consumer. ``prometheus_client`` and ``paho-mqtt`` come
with the optional ``[fleet]`` extra and are imported only when their flag is used.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import MtadError

LABELS = ("machine", "backend", "precision")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # seconds per window
DEFAULT_QUEUE = 10000  # messages held while the broker is away (a day of 1 s hops is 86400)
MAX_QUEUE = 60000  # below MQTT's 65535 packet ids, so queued messages never share one
DROP_REPORT_S = 60.0  # at most one "dropping" line per minute while the queue is full


class FleetError(MtadError):
    """A fleet option is unusable (missing extra, bad URL, port in use, TLS files)."""


def _require(module: str, flag: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FleetError(f"{flag} needs the fleet extra: pip install 'mtad[fleet]' (no module {module.split('.')[0]!r})") from None


class FanoutSink:
    """Writes each record to every sink in order; closes them in reverse."""

    def __init__(self, sinks):
        self.sinks = list(sinks)

    def write(self, record: dict) -> None:
        for s in self.sinks:
            s.write(record)

    def close(self) -> None:
        for s in reversed(self.sinks):
            if hasattr(s, "close"):
                s.close()


# -- Prometheus -------------------------------------------------------------------------------
class MetricsSink:
    """Serves the scoring metrics at ``http://addr:port/metrics`` (port 0: any free port, see ``.port``)."""

    def __init__(self, port: int, addr: str = "0.0.0.0", backend: str = "", precision: str = ""):
        prom = _require("prometheus_client", "--metrics-port")
        self.registry = reg = prom.CollectorRegistry()
        self.base = {"backend": backend, "precision": precision}
        self.windows = prom.Counter("mtad_windows_scored", "Windows (or clips) scored", LABELS, registry=reg)
        self.anomalies = prom.Counter("mtad_anomalies", "Windows scored above the threshold", LABELS, registry=reg)
        self.errors = prom.Counter("mtad_window_errors", "Windows that could not be scored (bad audio)", LABELS, registry=reg)
        self.dropped = prom.Counter("mtad_dropped_samples", "Samples dropped because the scorer fell behind", LABELS, registry=reg)
        self.overflows = prom.Counter("mtad_input_overflows", "Input overflows reported by the audio device", LABELS, registry=reg)
        self.last_score = prom.Gauge("mtad_last_score", "Score of the last window", LABELS, registry=reg)
        self.threshold = prom.Gauge("mtad_threshold", "Decision threshold of the machine", LABELS, registry=reg)
        self.latency = prom.Histogram("mtad_latency_seconds", "Scoring time per window (front end + model + scores)",
                                      LABELS, buckets=LATENCY_BUCKETS, registry=reg)
        self.heartbeat = prom.Gauge("mtad_last_heartbeat_timestamp_seconds", "Unix time of the last heartbeat line",
                                    LABELS, registry=reg)
        self.last_window = prom.Gauge("mtad_last_window_timestamp_seconds", "Unix time of the last window handled",
                                      LABELS, registry=reg)
        self._overflows_seen: dict[str, int] = {}
        try:
            self.server, self.thread = prom.start_http_server(port, addr=addr, registry=reg)
        except OSError as exc:
            raise FleetError(f"--metrics-port {port}: cannot listen on {addr}:{port} ({exc.strerror or exc})") from None
        self.port = self.server.server_port

    def attach_mqtt(self, publisher: "MqttPublisher") -> None:
        """Export the MQTT queue's state (queued, dropped, connected) with the scoring metrics."""
        core = _require("prometheus_client.core", "--metrics-port")
        CounterMetricFamily, GaugeMetricFamily = core.CounterMetricFamily, core.GaugeMetricFamily  # noqa: N806

        class Collector:
            def collect(self):
                yield CounterMetricFamily("mtad_mqtt_published", "MQTT messages acknowledged by the broker", value=publisher.acked)
                yield CounterMetricFamily("mtad_mqtt_dropped", "MQTT messages dropped because the queue was full", value=publisher.dropped)
                yield GaugeMetricFamily("mtad_mqtt_queued", "MQTT messages waiting for the broker", value=publisher.pending)
                yield GaugeMetricFamily("mtad_mqtt_connected", "1 while connected to the broker", value=float(publisher.connected))

        self.registry.register(Collector())

    def write(self, record: dict) -> None:
        labels = {"machine": record.get("machine", ""), "backend": record.get("backend", self.base["backend"]),
                  "precision": record.get("precision", self.base["precision"])}
        kind = record.get("type", "window")
        if kind == "heartbeat":
            self.heartbeat.labels(**labels).set(time.time())
            self._count_overflows(labels, record)
            return
        if kind != "window":
            return
        self.last_window.labels(**labels).set(time.time())
        # every counter of this machine is exported from its first window on, at 0 if need be
        self.dropped.labels(**labels).inc(record.get("dropped_samples", 0))
        self._count_overflows(labels, record)
        self.errors.labels(**labels).inc("error" in record)
        self.windows.labels(**labels).inc("error" not in record)
        self.anomalies.labels(**labels).inc(int("error" not in record and bool(record.get("anomaly"))))
        if "error" in record:
            return
        self.last_score.labels(**labels).set(record["score"])
        self.threshold.labels(**labels).set(record["threshold"])
        self.latency.labels(**labels).observe(record.get("latency_ms", 0.0) / 1000)

    def _count_overflows(self, labels: dict, record: dict) -> None:
        total = record.get("input_overflows")  # cumulative in the lines, a counter here
        if total is None:
            return
        key = labels["machine"]
        new = max(total - self._overflows_seen.get(key, 0), 0)
        self.overflows.labels(**labels).inc(new)
        self._overflows_seen[key] = max(total, self._overflows_seen.get(key, 0))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- MQTT ---------------------------------------------------------------------------------------
@dataclass
class MqttConfig:
    """Where and how to publish; built from ``--mqtt mqtt[s]://[user[:password]@]host[:port]/prefix``."""

    host: str
    port: int = 1883
    prefix: str = "mtad"
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # None with tls: the system's CAs
    cert_file: str | None = None  # client certificate (brokers that require one)
    key_file: str | None = None
    client_id: str = ""
    queue_size: int = DEFAULT_QUEUE
    keepalive: int = 30

    @classmethod
    def from_url(cls, url: str, **overrides) -> "MqttConfig":
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise FleetError(f"--mqtt takes mqtt://host[:port]/topic-prefix (or mqtts:// for TLS), got {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise FleetError(f"--mqtt: bad port in {url!r}") from None
        tls = parts.scheme == "mqtts"
        cfg = cls(host=parts.hostname, port=port or (8883 if tls else 1883), prefix=parts.path.strip("/") or "mtad",
                  username=unquote(parts.username) if parts.username else None,
                  password=unquote(parts.password) if parts.password else None, tls=tls)
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        if "+" in cfg.prefix or "#" in url:  # urlsplit would read "#" as the start of a fragment
            raise FleetError(f"--mqtt: the topic prefix may not contain MQTT wildcards (+ #), got {url!r}")
        if not 1 <= cfg.queue_size <= MAX_QUEUE:
            raise FleetError(f"--mqtt-queue must be between 1 and {MAX_QUEUE} messages, got {cfg.queue_size}")
        if (cfg.ca_file or cfg.cert_file) and not cfg.tls:
            cfg.tls = True  # a CA or client certificate only makes sense over TLS
        return cfg


class MqttPublisher:
    """Publishes at QoS 1 through paho's own loop thread: reconnects with exponential backoff
    (1 s up to 60 s), holds up to ``queue_size`` unacknowledged messages while the broker is
    away (nothing lost up to that bound), counts and reports what is dropped beyond it, and
    leaves a retained last-will ``offline`` status so the fleet sees a dead device."""

    def __init__(self, cfg: MqttConfig, log=print):
        mqtt = _require("paho.mqtt.client", "--mqtt")
        self.cfg, self.log = cfg, log
        self.client_id = cfg.client_id or f"mtad-{socket.gethostname()}"
        self.status_topic = f"{cfg.prefix}/status/{self.client_id}"
        self.accepted = self.acked = self.dropped = 0  # data messages (lines), not the status ones
        # Message ids awaiting PUBACK. paho calls on_publish holding its own queue lock, so ours is
        # never held across a paho call, and an ack may arrive before publish() has returned its id.
        self.data_mids: set[int] = set()
        self.status_mids: set[int] = set()
        self.early_acks: set[int] = set()
        self.connected = self.closing = False
        self.lock = threading.Lock()
        self.last_drop_report = float("-inf")
        self.queue_full = mqtt.MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        c.max_queued_messages_set(cfg.queue_size)
        c.max_inflight_messages_set(20)
        c.reconnect_delay_set(min_delay=1, max_delay=60)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            try:
                c.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file)
            except (OSError, ValueError) as exc:
                raise FleetError(f"--mqtt TLS: {exc}") from None
        c.will_set(self.status_topic, self._status("offline", "connection lost"), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self.client = c
        c.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        c.loop_start()

    def _status(self, state: str, why: str = "") -> str:
        return json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "client": self.client_id, "state": state,
                           **({"reason": why} if why else {})})

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.log(f"mqtt: {self.cfg.host}:{self.cfg.port} refused the connection ({reason_code}); retrying")
            return
        self.connected = True
        self.log(f"mqtt: connected to {self.cfg.host}:{self.cfg.port}, publishing under {self.cfg.prefix}/ ({self.pending} queued)")
        self._publish_status("online")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected and not self.closing:
            self.log(f"mqtt: disconnected from {self.cfg.host}:{self.cfg.port} ({reason_code}); queueing up to "
                     f"{self.cfg.queue_size} messages and reconnecting")
        self.connected = False

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            if mid in self.data_mids:
                self.data_mids.discard(mid)
                self.acked += 1
            elif mid in self.status_mids:
                self.status_mids.discard(mid)
            else:
                self.early_acks.add(mid)

    def _track(self, mid: int, data: bool) -> None:
        with self.lock:
            if mid in self.early_acks:
                self.early_acks.discard(mid)
                self.acked += data
            else:
                (self.data_mids if data else self.status_mids).add(mid)

    def _publish_status(self, state: str, why: str = ""):
        info = self.client.publish(self.status_topic, self._status(state, why), qos=1, retain=True)
        if info.rc != self.queue_full:
            self._track(info.mid, data=False)
        return info

    @property
    def pending(self) -> int:
        """Lines accepted and not yet acknowledged (queued or in flight)."""
        return len(self.data_mids)

    def _publish(self, topic: str, payload: str) -> bool:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc == self.queue_full:
            with self.lock:
                self.dropped += 1
            now = time.monotonic()
            if now - self.last_drop_report >= DROP_REPORT_S:
                self.last_drop_report = now
                self.log(f"mqtt: queue full ({self.cfg.queue_size} messages waiting for {self.cfg.host}:{self.cfg.port}): "
                         f"dropping new messages, {self.dropped} dropped so far")
            return False
        with self.lock:
            self.accepted += 1
        self._track(info.mid, data=True)
        return True

    def publish(self, topic: str, record: dict) -> bool:
        return self._publish(f"{self.cfg.prefix}/{topic}", json.dumps(record))

    def close(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` s for the queue to drain, mark the device offline, disconnect."""
        deadline = time.monotonic() + timeout
        while self.pending > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        lost = self.pending
        self.closing = True
        if self.connected:
            try:
                self._publish_status("offline", "stopped").wait_for_publish(2)
            except (RuntimeError, ValueError):  # the queue is full or the connection just went: the will says offline
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self.log(f"mqtt: {self.acked} message(s) acknowledged, {self.dropped} dropped (queue full)"
                 + (f", {lost} not delivered at exit (broker unreachable)" if lost > 0 else ""))


class MqttSink:
    """Every window line (scored or bad) to ``PREFIX/TYPE/ID/score``, anomalies also to
    ``PREFIX/TYPE/ID/alert``, heartbeats to ``PREFIX/TYPE/ID/heartbeat``; each payload is the
    JSON line plus a per-process ``seq`` (QoS 1 is at-least-once: subscribers drop repeats by it)."""

    def __init__(self, publisher: MqttPublisher):
        self.publisher = publisher
        self.seq = 0

    def write(self, record: dict) -> None:
        machine = record.get("machine") or "unknown"
        kind = record.get("type", "window")
        self.seq += 1
        payload = {**record, "seq": self.seq}
        if kind == "heartbeat":
            self.publisher.publish(f"{machine}/heartbeat", payload)
            return
        self.publisher.publish(f"{machine}/score", payload)
        if record.get("anomaly"):
            self.publisher.publish(f"{machine}/alert", payload)

    def close(self) -> None:
        self.publisher.close()
