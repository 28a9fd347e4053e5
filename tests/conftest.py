"""Shared fixtures: a local Sora server and an SDK instance, both closed after each test."""
from __future__ import annotations

import json
import threading
import time

import pytest


@pytest.fixture
def local_sora():
    from sora_sdk.testing import LocalSora

    with LocalSora() as server:
        yield server


@pytest.fixture
def sora():
    import sora_sdk

    instance = sora_sdk.Sora()
    try:
        yield instance
    finally:
        instance.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Recorder:
    """Collects a connection's callbacks; `connected` is set by its own connection.created notify."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.events = []
        self.connection_id = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnect = None
        self.notifies = []
        self.threads = set()
        conn.on_set_offer = self._on_set_offer
        conn.on_notify = self._on_notify
        conn.on_disconnect = self._on_disconnect
        conn.on_ws_close = lambda code, reason: self._record("ws_close", code, reason)
        conn.on_track = lambda track: self._record("track", track)
        conn.on_data_channel = lambda label: self._record("data_channel", label)
        conn.on_message = lambda label, data: self._record("message", label, data)
        conn.on_push = lambda text: self._record("push", text)
        conn.on_switched = lambda text: self._record("switched", text)

    def _record(self, name, *args) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append((name,) + args)

    def _on_set_offer(self, text: str) -> None:
        self.connection_id = json.loads(text)["connection_id"]
        self._record("set_offer", text)

    def _on_notify(self, text: str) -> None:
        message = json.loads(text)
        self.notifies.append(message)
        self._record("notify", message)
        if message.get("event_type") == "connection.created" and \
                message.get("connection_id") == self.connection_id:
            self.connected.set()

    def _on_disconnect(self, code, message: str) -> None:
        self.disconnect = (code, message)
        self._record("disconnect", code, message)
        self.disconnected.set()

    def of(self, name):
        return [e[1:] for e in self.events if e[0] == name]


@pytest.fixture
def recorder():
    return Recorder


def connected_video_sender(sora, url: str, channel_id: str, **options):
    """A sendonly connection with a new video source (no audio), connected: (video source, connection, recorder)."""
    video = sora.create_video_source()
    conn = sora.create_connection(signaling_urls=[url], role="sendonly", channel_id=channel_id, video_source=video,
                                  audio=False, **options)
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    return video, conn, rec
