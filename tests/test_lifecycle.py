"""Lifecycle as official programs are written: no close(), objects dropped, disconnect()/close() inside callbacks.

Every connection that called connect() gets exactly one on_disconnect, no callback of it runs after that, nothing
crashes, and dropped objects give back their threads and descriptors. The server runs in a child process where
threads and descriptors are counted, so that only this process's SDK objects are measured.
"""
from __future__ import annotations

import gc
import os
import pickle
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

import sora_sdk
from sora_sdk import SoraSignalingErrorCode as Code
from tests.conftest import Recorder, wait_until
from tests.media_pump import Pump

sys.path.insert(0, str(Path(__file__).resolve().parent / "reliability"))
from rel_probe import ServerProcess, fd_count, task_count, task_names  # noqa: E402

THREAD_SLACK = 2  # the reaper thread (started once) and a helper thread finishing


@pytest.fixture(scope="module")
def server():
    child = ServerProcess()
    try:
        yield child
    finally:
        child.close()


def collected(predicate, timeout: float = 15.0) -> bool:
    """`predicate()` after garbage collection (PyPy collects only when asked), polled until true."""
    def check() -> bool:
        gc.collect()
        return predicate()
    return wait_until(check, timeout, 0.1)


class Sender:
    """A sendonly connection of a Sora of its own, streaming video and audio into `channel` until stopped."""

    def __init__(self, url: str, channel: str) -> None:
        self.sora = sora_sdk.Sora()
        video = self.sora.create_video_source()
        audio = self.sora.create_audio_source(1, 48000)
        self.conn = self.sora.create_connection(signaling_urls=[url], role="sendonly", channel_id=channel,
                                                video_source=video, audio_source=audio)
        self.rec = Recorder(self.conn)
        self.conn.connect()
        assert self.rec.connected.wait(15), self.rec.events
        self.pump = Pump(video, audio, ((0, 0, 255), (255, 0, 0)))

    def stop(self) -> None:
        self.pump.stop()
        self.conn.disconnect()
        self.sora.close()


@pytest.fixture
def sender(server):
    channel = "lifecycle-%d" % time.monotonic_ns()
    s = Sender(server.url, channel)
    s.channel = channel
    try:
        yield s
    finally:
        s.stop()


def after_disconnect(rec: Recorder):
    """Events recorded after the first on_disconnect (must be none)."""
    names = [e[0] for e in rec.events]
    return rec.events[names.index("disconnect") + 1:] if "disconnect" in names else []


# --------------------------------------------------------------------------- dropped objects
def test_dropped_sora_objects_give_back_their_threads():
    gc.collect()
    base = task_count()
    refs = []
    for _ in range(30):
        sora = sora_sdk.Sora()
        sora.create_video_source()
        refs.append(weakref.ref(sora))
        del sora
    assert collected(lambda: all(r() is None for r in refs))
    assert collected(lambda: task_count() <= base + THREAD_SLACK, 20), (base, task_names())


def test_dropped_connection_disconnects_and_is_freed(server):
    sora = sora_sdk.Sora()
    ends = []
    conn = sora.create_connection(signaling_urls=[server.url], role="recvonly", channel_id="drop-one")
    conn.on_disconnect = lambda code, message: ends.append((code, message))
    conn.connect()
    assert wait_until(lambda: conn.connection_state == "connected", 15)
    ref = weakref.ref(conn)
    del conn
    assert collected(lambda: ref() is None)
    # its on_disconnect still came, once: dropping ends the connection as disconnect() does
    assert wait_until(lambda: ends, 10)
    time.sleep(0.3)
    assert len(ends) == 1 and ends[0][0] == Code.CLOSE_SUCCEEDED, ends
    sora.close()


def test_dropped_connections_in_reference_cycles_end_and_release_everything(server):
    """conn.on_x = self.method (the official examples' style) and the application object dropped: collected,
    disconnected, threads and descriptors back where they were; a connection never connected is freed too."""

    class App:
        def __init__(self, sora) -> None:
            self.ended = []
            self.conn = sora.create_connection(signaling_urls=[server.url], role="sendrecv", channel_id="drop-many",
                                               audio=False, video=False, data_channel_signaling=True,
                                               data_channels=[{"label": "#x", "direction": "sendrecv"}])
            self.conn.on_disconnect = self.on_disconnect
            self.conn.on_notify = self.on_notify

        def on_disconnect(self, code, message) -> None:
            ended.append(code)

        def on_notify(self, text) -> None:
            pass

    ended = []
    sora = sora_sdk.Sora()
    warm = App(sora)
    warm.conn.connect()
    assert wait_until(lambda: warm.conn.connection_state == "connected", 15)
    del warm
    assert wait_until(lambda: (gc.collect() or True) and len(ended) == 1, 15)
    gc.collect()
    base_tasks, base_fds = task_count(), fd_count()
    apps = [App(sora) for _ in range(10)]
    for app in apps:
        app.conn.connect()
    assert wait_until(lambda: all(a.conn.connection_state == "connected" for a in apps), 20)
    refs = [weakref.ref(a) for a in apps] + [weakref.ref(App(sora).conn)]  # the last one never connects
    del apps, app
    assert collected(lambda: all(r() is None for r in refs)), [r() for r in refs]
    assert wait_until(lambda: len(ended) == 11, 15), ended
    assert collected(lambda: task_count() <= base_tasks + THREAD_SLACK and fd_count() <= base_fds, 20), \
        (base_tasks, task_count(), base_fds, fd_count(), task_names())
    sora.close()
    assert ended == [Code.CLOSE_SUCCEEDED] * 11, ended


# --------------------------------------------------------------------------- stopping things inside callbacks
def _receiver(sora, url: str, channel: str):
    conn = sora.create_connection(signaling_urls=[url], role="recvonly", channel_id=channel)
    return conn, Recorder(conn)


@pytest.mark.parametrize("run", range(3))
def test_sora_close_inside_on_frame(server, sender, run):
    sora = sora_sdk.Sora()
    conn, rec = _receiver(sora, server.url, sender.channel)
    frames = []
    closed = threading.Event()
    sinks = []

    def on_frame(frame) -> None:
        frames.append(frame.width)
        if len(frames) == 1:
            sora.close()  # returns at once inside a callback; a helper thread finishes
            closed.set()

    def on_track(track) -> None:
        rec._record("track", track)
        if track.kind == "video":
            sink = sora_sdk.SoraVideoSink(track)
            sink.on_frame = on_frame
            sinks.append(sink)

    conn.on_track = on_track
    conn.connect()
    assert closed.wait(15), rec.events
    assert rec.disconnected.wait(15), rec.events
    time.sleep(0.5)
    assert [e[0] for e in rec.events].count("disconnect") == 1, rec.events
    assert after_disconnect(rec) == []
    count = len(frames)
    time.sleep(0.3)
    assert len(frames) == count  # the sink delivers nothing more
    with pytest.raises(sora_sdk.SoraInvalidState):
        sora.create_video_source()


def test_blocked_on_frame_while_main_thread_disconnects_and_closes(server, sender):
    """A frame callback blocks longer than every close bound while the main thread calls disconnect() and then
    close(): both return within their bounds, and the context is freed only after the callback has returned."""
    sora = sora_sdk.Sora()
    conn, rec = _receiver(sora, server.url, sender.channel)
    inside, release, returned = threading.Event(), threading.Event(), threading.Event()

    def on_frame(frame) -> None:
        if not inside.is_set():
            inside.set()
            release.wait(20)
            frame.data().sum()  # the frame's memory is still valid after the context went
            returned.set()

    def on_track(track) -> None:
        if track.kind == "video":
            sink = sora_sdk.SoraVideoSink(track)
            sink.on_frame = on_frame
            on_track.sink = sink

    conn.on_track = on_track
    conn.connect()
    assert inside.wait(15)
    started = time.monotonic()
    conn.disconnect()
    sora.close()
    took = time.monotonic() - started
    assert took < 15, took
    assert rec.disconnect is not None and rec.disconnect[0] == Code.CLOSE_SUCCEEDED, rec.events
    time.sleep(1.0)
    release.set()
    assert returned.wait(5)
    del on_track.sink
    time.sleep(0.5)
    assert [e[0] for e in rec.events].count("disconnect") == 1


def test_disconnect_inside_on_track(server, sender):
    sora = sora_sdk.Sora()
    conn, rec = _receiver(sora, server.url, sender.channel)

    def on_track(track) -> None:
        rec._record("track", track)
        conn.disconnect()

    conn.on_track = on_track
    conn.connect()
    assert rec.disconnected.wait(15), rec.events
    time.sleep(1.0)
    names = [e[0] for e in rec.events]
    assert names.count("disconnect") == 1, rec.events
    assert "set_offer" not in names, rec.events
    assert after_disconnect(rec) == []
    assert rec.disconnect[0] == Code.CLOSE_SUCCEEDED, rec.disconnect
    assert conn.connection_state == "closed" and conn.ice_connection_state == "closed"
    sora.close()


@pytest.mark.parametrize("where", ["on_notify", "on_push"])
def test_sora_close_inside_a_dispatcher_callback(local_sora, where):
    sora = sora_sdk.Sora()
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="cb-close")
    rec = Recorder(conn)
    called = threading.Event()

    def closer(text) -> None:
        rec._record(where, text)
        if not called.is_set():
            called.set()
            sora.close()

    setattr(conn, where, closer)
    conn.connect()
    if where == "on_push":
        assert wait_until(lambda: local_sora.connections("cb-close"), 10)
        time.sleep(0.3)
        local_sora.push("cb-close", {"n": 1})
    assert called.wait(10)
    assert rec.disconnected.wait(10), rec.events
    started = time.monotonic()
    conn.disconnect()  # already ended: returns at once
    assert time.monotonic() - started < 1.0
    time.sleep(0.3)
    assert [e[0] for e in rec.events].count("disconnect") == 1
    assert after_disconnect(rec) == []
    assert wait_until(lambda: not local_sora.connections("cb-close"), 10)


def test_connection_disconnect_and_sink_close_inside_their_own_callbacks(server, sender):
    sora = sora_sdk.Sora()
    conn, rec = _receiver(sora, server.url, sender.channel)
    audio_frames, video_frames, at_disconnect = [], [], []

    def on_track(track) -> None:
        rec._record("track", track)
        if track.kind == "audio":
            sink = sora_sdk.SoraAudioStreamSink(track)

            def on_audio(frame) -> None:
                audio_frames.append(frame)
                sink.close()
            sink.on_frame = on_audio
        else:
            sink = sora_sdk.SoraVideoSink(track)

            def on_video(frame) -> None:
                video_frames.append(frame)
                # the audio sink closes itself first (audio may start later than video on a busy machine)
                if len(video_frames) >= 3 and audio_frames and not at_disconnect:
                    at_disconnect.append(len(video_frames))
                    conn.disconnect()
            sink.on_frame = on_video
        on_track.sinks.append(sink)

    on_track.sinks = []
    conn.on_track = on_track
    conn.connect()
    assert rec.disconnected.wait(20), (rec.events, len(audio_frames), len(video_frames))
    time.sleep(0.5)
    assert len(audio_frames) == 1  # nothing after the sink's close() inside its own callback
    assert len(video_frames) == at_disconnect[0]  # nothing after disconnect() inside the sink's callback
    assert [e[0] for e in rec.events].count("disconnect") == 1
    sora.close()


# --------------------------------------------------------------------------- smaller defects
def test_after_disconnect_every_state_and_error_is_accurate(local_sora):
    sora = sora_sdk.Sora()
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendrecv", channel_id="after",
                                  audio=False, video=False, data_channel_signaling=True,
                                  data_channels=[{"label": "#x", "direction": "sendrecv"}])
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(10)
    assert wait_until(lambda: conn.connection_state == "connected", 10)
    conn.disconnect()
    assert conn.ice_connection_state == "closed" and conn.connection_state == "closed"
    with pytest.raises(sora_sdk.SoraInvalidState, match=r"send_rpc\(\)"):
        conn.send_rpc(1, "m")
    with pytest.raises(sora_sdk.SoraInvalidState, match=r"send_data_channel\(\).*CLOSE_SUCCEEDED"):
        conn.send_data_channel("#x", b"1")
    with pytest.raises(sora_sdk.SoraInvalidState, match=r"get_stats\(\)"):
        conn.get_stats()
    with pytest.raises(RuntimeError, match="create_connection"):
        conn.connect()
    sora.close()


def test_a_sink_on_an_ended_track_is_refused(server, sender):
    sora = sora_sdk.Sora()
    conn, rec = _receiver(sora, server.url, sender.channel)
    conn.connect()
    assert wait_until(lambda: len(rec.of("track")) >= 2, 15), rec.events
    conn.disconnect()
    for (track,) in rec.of("track"):
        sink_class = sora_sdk.SoraVideoSink if track.kind == "video" else sora_sdk.SoraAudioStreamSink
        with pytest.raises(sora_sdk.SoraInvalidState, match="ended"):
            sink_class(track)
    sora.close()


def test_audio_stream_sink_counts_what_a_slow_consumer_loses(server, sender):
    sora = sora_sdk.Sora()
    conn, rec = _receiver(sora, server.url, sender.channel)
    sinks = []

    def on_track(track) -> None:
        if track.kind == "audio":
            sink = sora_sdk.SoraAudioStreamSink(track)
            sink.on_frame = lambda frame: time.sleep(0.05)  # 5x slower than real time
            sinks.append(sink)

    conn.on_track = on_track
    conn.connect()
    assert wait_until(lambda: sinks and sinks[0].dropped > 0, 15)
    conn.disconnect()
    sora.close()


def test_video_frames_pickle_with_a_copy_of_their_pixels(server, sender):
    sora = sora_sdk.Sora()
    conn, rec = _receiver(sora, server.url, sender.channel)
    got = []

    def on_track(track) -> None:
        if track.kind == "video":
            for fmt in ("bgr", "i420"):
                sink = sora_sdk.SoraVideoSink(track, format=fmt)
                sink.on_frame = lambda frame: len(got) < 2 and got.append(pickle.loads(pickle.dumps(frame)))
                on_track.sinks.append(sink)

    on_track.sinks = []
    conn.on_track = on_track
    conn.connect()
    assert wait_until(lambda: len(got) >= 2, 15)
    conn.disconnect()
    sora.close()
    for frame in got:
        data = frame.data()
        assert frame.width == 320 and frame.height == 240
        assert data.shape == ((240, 320, 3) if frame.format == "bgr" else (360, 320))
        if frame.format == "bgr":
            assert abs(int(data[200, 40, 2]) - 255) < 40 and int(data[200, 40, 0]) < 40  # the red half


def test_strided_frames_are_sent_without_a_copy(server):
    """on_captured() with a crop of a larger picture and on_captured_i420() with padded planes: what arrives is
    the picture itself (a wrong stride would shear it into stripes)."""
    channel = "strided"
    tx = sora_sdk.Sora()
    video = tx.create_video_source()
    conn = tx.create_connection(signaling_urls=[server.url], role="sendonly", channel_id=channel,
                                video_source=video, audio=False)
    conn.connect()
    rx = sora_sdk.Sora()
    rconn, rrec = _receiver(rx, server.url, channel)
    frames = []

    def on_track(track) -> None:
        if track.kind == "video":
            sink = sora_sdk.SoraVideoSink(track, format="i420")
            sink.on_frame = lambda frame: frames.append(frame.planes()[0].copy())
            on_track.sink = sink

    rconn.on_track = on_track
    rconn.connect()
    w, h = 160, 120
    big = np.zeros((h + 20, w + 64, 3), np.uint8)
    big[10:10 + h, 32:32 + w // 2] = (255, 255, 255)  # left half white, right half black, inside the crop
    crop = big[10:10 + h, 32:32 + w]
    pad = 64
    y = np.zeros((h, w + pad), np.uint8)[:, :w]
    y[:, w // 2:] = 235  # I420: right half white
    u = np.full((h // 2, w // 2 + pad), 128, np.uint8)[:, : w // 2]
    v = np.full((h // 2, w // 2 + pad), 128, np.uint8)[:, : w // 2]
    assert not crop.flags["C_CONTIGUOUS"] and not y.flags["C_CONTIGUOUS"]
    deadline = time.monotonic() + 20
    seen = {}
    while time.monotonic() < deadline and len(seen) < 2:
        for kind in ("crop", "i420"):
            frames.clear()
            for _ in range(20):
                if kind == "crop":
                    video.on_captured(crop)
                else:
                    video.on_captured_i420(y, u, v)
                time.sleep(1 / 30)
            if frames:
                luma = frames[-1]
                left, right = float(luma[:, : w // 2 - 8].mean()), float(luma[:, w // 2 + 8:].mean())
                seen[kind] = (left, right)
    assert "crop" in seen and "i420" in seen, seen
    assert seen["crop"][0] > 200 and seen["crop"][1] < 40, seen
    assert seen["i420"][0] < 40 and seen["i420"][1] > 200, seen
    rconn.disconnect()
    conn.disconnect()
    rx.close()
    tx.close()


def test_a_failure_nobody_listens_to_is_logged(caplog):
    sora = sora_sdk.Sora()
    conn = sora.create_connection(signaling_urls=["ws://127.0.0.1:1/signaling"], role="recvonly", channel_id="x")
    with caplog.at_level("WARNING", logger="sora_sdk"):
        conn.connect()
        assert wait_until(lambda: any("WEBSOCKET_HANDSHAKE_FAILED" in r.getMessage() for r in caplog.records), 10)
    with pytest.raises(RuntimeError, match=r"create_connection\(\)"):
        conn.connect()  # again on an ended connection: the error says what to do
    sora.close()


def test_a_second_connect_warns(local_sora, caplog):
    sora = sora_sdk.Sora()
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="twice")
    conn.connect()
    with caplog.at_level("WARNING", logger="sora_sdk"):
        conn.connect()
    assert any("connect() was called again" in r.getMessage() for r in caplog.records)
    conn.disconnect()
    sora.close()


def test_callback_exceptions_are_logged_once_per_interval(server, sender, caplog):
    sora = sora_sdk.Sora()
    conn, rec = _receiver(sora, server.url, sender.channel)
    raised = []

    def on_frame(frame) -> None:
        raised.append(1)
        raise ValueError("boom %d" % len(raised))

    def on_track(track) -> None:
        if track.kind == "video":
            sink = sora_sdk.SoraVideoSink(track)
            sink.on_frame = on_frame
            on_track.sink = sink

    conn.on_track = on_track
    with caplog.at_level("ERROR", logger="sora_sdk"):
        conn.connect()
        assert wait_until(lambda: len(raised) >= 30, 15)
        conn.disconnect()
    logged = [r for r in caplog.records if "on_frame" in r.getMessage()]
    with_traceback = [r for r in logged if r.exc_info]
    assert 1 <= len(with_traceback) <= 2, len(with_traceback)  # one per 5 s interval
    assert len(logged) < len(raised) / 5, (len(logged), len(raised))
    sora.close()
