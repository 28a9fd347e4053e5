"""Leaks/lifetime: 1,000 connect/disconnect cycles in one process with flat memory, descriptors and threads.

The local Sora server runs in a child process (``python -m sora_sdk.testing``),
so what is measured here is the SDK alone (the server's own memory is reported,
not asserted). Cycles rotate through four kinds:

0. recvonly in a channel where a long-lived sender streams 160x120 video + audio,
   with a video and an audio sink on the received tracks;
1. sendonly with (shared) video and audio sources, a few frames pushed;
2. sendrecv with DataChannel signaling and a ``#`` data channel, one message sent
   once it is open;
3. a whole new ``Sora`` instance (engine context) with its own sources: sendonly,
   then the instance is closed.

Each cycle waits for the connection.created notify and the peer connection
state "connected", then disconnects (CLOSE_SUCCEEDED). After a warm-up
(RELIABILITY_WARMUP cycles, default 200) RSS (after gc + malloc_trim), open
descriptors and threads (Python threads and /proc/self/task) are measured; at
the end RSS must be < 5 % above it and descriptors / threads not above it.
The server child's threads are checked as well (its connections are shim
peers: a forward left behind by each receiver that left showed up there).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Dict, List

import numpy as np
import pytest

import sora_sdk
from sora_sdk import SoraSignalingErrorCode as Code
from tests.conftest import Recorder, wait_until

from rel_probe import ServerProcess, fd_count, rss_kb, run_in_child, settle, task_count, task_names

CYCLES = int(os.environ.get("RELIABILITY_CYCLES", "1000"))
WARMUP = min(int(os.environ.get("RELIABILITY_WARMUP", "200")), max(CYCLES // 5, 1))
RSS_LIMIT = 0.05
SERVER_TASKS_SLACK = 25
W, H = 160, 120

pytestmark = pytest.mark.timeout(1200)

WS_OK = "Succeeded to close WebSocket (DC signaling is not enabled)"
DC_OK = "Succeeded to close Websocket (DC signaling is enabled)"


class Feeder:
    """Pushes 160x120 frames at 15 fps and 10 ms audio chunks into sources, on one thread."""

    def __init__(self, video, audio) -> None:
        self.sources = [(video, audio)]
        self.lock = threading.Lock()
        self.frame = np.zeros((H, W, 3), np.uint8)
        self.frame[:, : W // 2] = (40, 160, 220)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, name="reliability-feeder", daemon=True)
        self.thread.start()

    def run(self) -> None:
        chunk = np.zeros((480, 1), np.int16)
        n = 0
        while not self.stop_event.wait(1 / 15):
            n += 1
            self.frame[:8] = (n * 9) % 256
            with self.lock:
                sources = list(self.sources)
            for video, audio in sources:
                try:
                    video.on_captured(self.frame)
                    for _ in range(6):
                        audio.on_data(chunk)
                except sora_sdk.SoraError:
                    pass  # a source of a Sora instance being closed

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)


def stable_counts():
    """(fds, python threads, tasks) once they stopped changing (short-lived close helpers have ended)."""
    last = None
    deadline = time.monotonic() + 10
    while True:
        now = (fd_count(), threading.active_count(), task_count())
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.3)


class Cycles:
    """The shared pieces of the cycles and one cycle as a method (its locals die with it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sora = sora_sdk.Sora()
        self.video = self.sora.create_video_source()
        self.audio = self.sora.create_audio_source(1, 48000)
        self.feeder = Feeder(self.video, self.audio)
        self.frames = {"video": 0, "audio": 0}
        self.first_frame: List[float] = []
        self.dc_open: List[float] = []  # connected -> "#life" open, per DC cycle
        self.ends: Dict[str, int] = {}
        # the long-lived sender of the recvonly cycles' channel
        self.sender_sora = sora_sdk.Sora()
        s_video = self.sender_sora.create_video_source()
        s_audio = self.sender_sora.create_audio_source(1, 48000)
        with self.feeder.lock:
            self.feeder.sources.append((s_video, s_audio))
        self.sender = self.sender_sora.create_connection(
            signaling_urls=[url], role="sendonly", channel_id="life-media", video_source=s_video,
            audio_source=s_audio, video_codec_type="VP8", video_bit_rate=200)
        rec = Recorder(self.sender)
        self.sender.connect()
        assert rec.connected.wait(15), rec.events
        # From now on the sender only counts its notifies: a Recorder keeps every parsed one (a connection.created
        # and a .destroyed per recvonly cycle, ~2.5 KiB/cycle on average), which is the test's growth, not the SDK's.
        self.sender_notifies = 0
        self.sender.on_notify = self.count_sender_notify

    def count_frame(self, kind: str) -> None:
        self.frames[kind] += 1

    def count_sender_notify(self, text: str) -> None:
        self.sender_notifies += 1

    def run(self, i: int) -> None:
        kind = i % 4
        own = None
        if kind == 3:
            own = sora_sdk.Sora()
            factory = own
            o_video, o_audio = own.create_video_source(), own.create_audio_source(1, 48000)
            o_video.on_captured(self.feeder.frame)
            kwargs = dict(role="sendonly", video_source=o_video, audio_source=o_audio, video_codec_type="VP8")
        else:
            factory = self.sora
            if kind == 0:
                kwargs = dict(role="recvonly", channel_id="life-media")
            elif kind == 1:
                kwargs = dict(role="sendonly", video_source=self.video, audio_source=self.audio,
                              video_codec_type="VP8", video_bit_rate=200)
            else:
                kwargs = dict(role="sendrecv", audio=False, video=False, data_channel_signaling=True,
                              data_channels=[{"label": "#life", "direction": "sendrecv"}])
        kwargs.setdefault("channel_id", "life-%d" % kind)
        conn = factory.create_connection(signaling_urls=[self.url], **kwargs)
        rec = Recorder(conn)
        sinks: list = []
        if kind == 0:
            def on_track(track):
                rec._record("track", track)
                if track.kind == "video":
                    sink = sora_sdk.SoraVideoSink(track)
                    sink.on_frame = lambda frame: self.count_frame("video")
                else:
                    sink = sora_sdk.SoraAudioSink(track, 48000, 1)
                    sink.on_data = lambda data: self.count_frame("audio")
                sinks.append(sink)
            conn.on_track = on_track
        try:
            conn.connect()
            assert rec.connected.wait(15), (i, rec.events)
            assert wait_until(lambda: conn.connection_state == "connected", 15), (i, conn.connection_state)
            if kind == 2:
                # SCTP starts once DTLS is up; an INIT the other side drops (its DTLS not ready yet) is resent
                # after usrsctp's RTO: 3 s, then 6 s, 12 s, so an open can take 3-21 s. Wait 30 s; report the slowest.
                waited = time.monotonic()
                assert wait_until(lambda: ("#life",) in rec.of("data_channel"), 30), (i, rec.events)
                self.dc_open.append(time.monotonic() - waited)
                assert conn.send_data_channel("#life", b"cycle %d" % i)
            elif kind == 0:
                assert wait_until(lambda: len(sinks) == 2, 10), (i, rec.events)
                if i % 40 == 0:  # now and then, stay until decoded video arrives
                    before = self.frames["video"]
                    waited = time.monotonic()
                    if wait_until(lambda: self.frames["video"] > before, 5):
                        self.first_frame.append(time.monotonic() - waited)
        finally:
            conn.disconnect()
            if own is not None:
                own.close()
        code, message = rec.disconnect
        assert code == Code.CLOSE_SUCCEEDED and message in (WS_OK, DC_OK), (i, rec.disconnect)
        self.ends[message] = self.ends.get(message, 0) + 1

    def close(self) -> None:
        try:
            self.sender.disconnect()
        finally:
            self.feeder.stop()
            self.sender_sora.close()
            self.sora.close()


def measure():
    return (rss_kb(),) + stable_counts()


def settled_server_tasks(server) -> int:
    """The server's thread count once the last cycle's server-side teardown has ended (it is asynchronous)."""
    last, deadline = -1, time.monotonic() + 10
    while True:
        now = server.task_count()
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.5)


def run_cycles() -> dict:
    """The cycles themselves (in a process of their own, see rel_probe.run_in_child)."""
    server = ServerProcess()
    samples: List[Dict[str, float]] = []
    started = time.monotonic()
    cpu0 = time.process_time()
    baseline = end = None
    base_tasks_names: List[str] = []
    server_tasks = [0, 0]
    try:
        cycles = Cycles(server.url)
        try:
            for i in range(CYCLES):
                cycles.run(i)
                if i + 1 == WARMUP:
                    baseline = measure()
                    base_tasks_names = task_names()
                    server_tasks[0] = settled_server_tasks(server)
                if i + 1 == CYCLES:
                    b = baseline
                    settle(lambda: fd_count() <= b[1] and threading.active_count() <= b[2] and task_count() <= b[3],
                           15)  # close helpers and engine threads of the last connection end asynchronously
                    end = measure()
                    server_tasks[1] = settled_server_tasks(server)
                if (i + 1) % 100 == 0 or i + 1 == CYCLES:
                    samples.append({"cycle": i + 1, "rss": rss_kb(), "server_rss": server.rss_kb(),
                                    "server_tasks": server.task_count(), "t": time.monotonic() - started})
        finally:
            cycles.close()
    finally:
        server.close()
    return {"took": time.monotonic() - started, "cpu": time.process_time() - cpu0, "baseline": baseline,
            "server_tasks": server_tasks,
            "end": end, "samples": samples, "frames": cycles.frames, "ends": cycles.ends,
            "dc_open": sorted(cycles.dc_open)[-3:], "dc_slow": sum(1 for t in cycles.dc_open if t > 2.0),
            "task_names": [base_tasks_names, task_names()]}


def test_connect_disconnect_cycles(report):
    result = run_in_child("check_lifetime", "run_cycles", timeout=1100)
    took, cpu, samples = result["took"], result["cpu"], result["samples"]
    base_rss, base_fds, base_threads, base_tasks = result["baseline"]
    end_rss, end_fds, end_threads, end_tasks = result["end"]
    growth = (end_rss - base_rss) / base_rss
    late = [s for s in samples if s["cycle"] >= CYCLES * 0.6]
    slope = (late[-1]["rss"] - late[0]["rss"]) / max(late[-1]["cycle"] - late[0]["cycle"], 1) if len(late) > 1 else 0
    section = "lifetime"
    report.add(section, "cycles (warm-up), in one process of their own", "%d (%d)" % (CYCLES, WARMUP))
    report.add(section, "cycle kinds, in turn", "recvonly + video/audio sinks; sendonly + sources; "
                                                 "DC signaling + #label message; new Sora instance sendonly")
    report.add(section, "wall time, mean per cycle", "%.1f s, %.0f ms" % (took, 1000 * took / CYCLES))
    report.add(section, "CPU per cycle (SDK process)", "%.0f ms" % (1000 * cpu / CYCLES))
    report.add(section, "RSS after warm-up -> end", "%.1f -> %.1f MiB" % (base_rss / 1024, end_rss / 1024))
    report.add(section, "RSS growth after warm-up (limit < 5 %)", "%+.2f %%" % (100 * growth))
    report.add(section, "RSS slope over the last 40 % of the cycles", "%.2f KiB/cycle" % slope)
    report.add(section, "open fds after warm-up -> end", "%d -> %d" % (base_fds, end_fds))
    report.add(section, "threads (/proc/self/task) after warm-up -> end", "%d -> %d" % (base_tasks, end_tasks))
    report.add(section, "Python threads after warm-up -> end", "%d -> %d" % (base_threads, end_threads))
    report.add(section, "RSS every 100 cycles (MiB)", " ".join("%.1f" % (s["rss"] / 1024) for s in samples))
    report.add(section, "server child process RSS (not asserted), first -> last sample",
               "%.1f -> %.1f MiB" % (samples[0]["server_rss"] / 1024, samples[-1]["server_rss"] / 1024))
    server_base, server_end = result["server_tasks"]
    report.add(section, "server child process threads after warm-up -> end (limit + %d)" % SERVER_TASKS_SLACK,
               "%d -> %d (every 100 cycles: %s)" % (server_base, server_end,
                                                   " ".join(str(s["server_tasks"]) for s in samples)))
    report.add(section, "received by the recvonly cycles' sinks", "%d video frames, %d audio chunks"
               % (result["frames"]["video"], result["frames"]["audio"]))
    report.add(section, "on_disconnect", "; ".join("%s x%d" % kv for kv in result["ends"].items()))
    report.add(section, "DC cycles: connected -> #label open, slowest 3 (opens over 2 s)",
               "%s s (%d)" % (" ".join("%.2f" % t for t in result["dc_open"]), result["dc_slow"]))
    assert growth < RSS_LIMIT, samples
    assert end_fds <= base_fds, (base_fds, end_fds)
    assert end_tasks <= base_tasks and end_threads <= base_threads, (result["baseline"], result["end"],
                                                                     result["task_names"])
    # The server's peers are shim peers too: every receiver that left used to leave a forward branch (and its
    # queue thread) on the long-lived sender's tee, ~2 threads per recvonly cycle. The slack only absorbs
    # server-side teardowns still in progress.
    assert server_end <= server_base + SERVER_TASKS_SLACK, (server_base, server_end, samples)
