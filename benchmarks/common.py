"""What the benchmark scripts share: an SDK client that knows when it is connected, and CPU time."""
from __future__ import annotations

import json
import resource
import threading
import time


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Client:
    """One SDK connection; `start()` returns the seconds from connect() to its own connection.created."""

    def __init__(self, sora, url: str, **kwargs) -> None:
        self.conn = sora.create_connection(signaling_urls=[url], **kwargs)
        self.connection_id = None
        self.connected = threading.Event()
        self.messages = []
        self.channel_open = threading.Event()
        self.conn.on_set_offer = self._on_set_offer
        self.conn.on_notify = self._on_notify
        self.conn.on_data_channel = lambda label: self.channel_open.set()
        self.conn.on_message = lambda label, data: self.messages.append((time.perf_counter(), data))

    def _on_set_offer(self, text: str) -> None:
        self.connection_id = json.loads(text)["connection_id"]

    def _on_notify(self, text: str) -> None:
        message = json.loads(text)
        if message.get("event_type") == "connection.created" and message.get("connection_id") == self.connection_id:
            self.connected.set()

    def start(self, timeout: float = 15.0) -> float:
        begin = time.perf_counter()
        self.conn.connect()
        if not self.connected.wait(timeout):
            raise RuntimeError("not connected within %.0f s" % timeout)
        return time.perf_counter() - begin
