"""A real MQTT broker for tests: Debian's mosquitto, started and stopped by the test.

mosquitto rather than a Python broker: it is what fleets run, and its on-disk persistence keeps
a subscriber's session (and the messages queued for it) across a broker restart, which the
broker-outage test needs to count every line. ``scripts/setup.sh`` installs it (apt, once).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not found:
        pytest.skip("the mosquitto broker is not installed (apt-get install mosquitto; scripts/setup.sh does it)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """One broker on 127.0.0.1:``port`` with persistence in ``workdir``; ``stop()``/``start()`` again."""

    def __init__(self, workdir: Path, password_file: Path | None = None, tls: dict | None = None):
        self.binary = mosquitto_binary()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = [
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "max_queued_messages 0",  # no cap for an offline persistent subscriber
            f"log_dest file {self.workdir}/mosquitto.log",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if password_file else 'true'}",
        ]
        if password_file:
            lines.append(f"password_file {password_file}")
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = None

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}"
                                   f"{(self.workdir / 'mosquitto.log').read_text() if (self.workdir / 'mosquitto.log').exists() else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.proc.wait(10)
        self.proc = None


class Subscriber:
    """A persistent-session QoS 1 subscriber that collects (topic, payload) pairs."""

    def __init__(self, port: int, topic: str = "#", client_id: str = "test-subscriber", **tls_auth):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.reconnect_delay_set(min_delay=1, max_delay=1)
        if tls_auth.get("username"):
            c.username_pw_set(tls_auth["username"], tls_auth.get("password"))
        if tls_auth.get("ca"):
            c.tls_set(ca_certs=tls_auth["ca"])

        def on_connect(client, userdata, flags, reason_code, properties):
            if not reason_code.is_failure:
                client.subscribe(topic, qos=1)

        def on_message(client, userdata, msg):
            with self.lock:
                self.messages.append((msg.topic, msg.payload))

        c.on_connect = on_connect
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = on_message
        self.client = c
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("test subscriber could not subscribe")

    def topics(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def wait_for(self, suffix: str, n: int, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.topics(suffix)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.topics(suffix)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
