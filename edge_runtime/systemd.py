"""systemd's notify protocol (``Type=notify``, ``WatchdogSec``) in a few lines over $NOTIFY_SOCKET.

Outside systemd (no $NOTIFY_SOCKET) every call is a no-op, so the same code runs anywhere.
Protocol: newline-separated ``KEY=VALUE`` datagrams to the AF_UNIX socket named in
$NOTIFY_SOCKET (a leading ``@`` means the abstract namespace); the watchdog interval is
$WATCHDOG_USEC, meant for the process $WATCHDOG_PID when that is set (sd_notify(3), sd_watchdog_enabled(3)).
"""

from __future__ import annotations

import os
import socket
import time


class SystemdNotifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET") or None
        if addr and addr.startswith("@"):
            addr = "\0" + addr[1:]
        self.address = addr
        self.sock = None
        if addr:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        # seconds within which systemd expects WATCHDOG=1; None: no watchdog asked for
        self.watchdog_s = int(usec) / 1e6 if addr and usec.isdigit() and int(usec) > 0 and mine else None
        self.last_ping = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, **fields) -> bool:
        """Send ``KEY=value`` lines (e.g. ``READY=1``); False when not under systemd or the send failed."""
        if self.sock is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self.sock.sendto(msg, self.address)
            return True
        except OSError:  # systemd went away or the socket is gone: never fatal for the scorer
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def stopping(self, status: str = "") -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def watchdog_due(self, now: float | None = None) -> bool:
        """True when a ping is due: twice per watchdog interval, as sd_watchdog_enabled(3) advises."""
        if self.watchdog_s is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self.last_ping >= self.watchdog_s / 2

    def watchdog(self, status: str = "") -> bool:
        self.last_ping = time.monotonic()
        return self.notify(WATCHDOG=1, **({"STATUS": status} if status else {}))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
