"""Load: 50 concurrent connections in one process for RELIABILITY_LOAD_SECONDS (default 120) with none dropped.

10 senders (160x120 VP8 at 15 fps + Opus) and 40 receivers, spread over 5
channels (2 senders and 8 receivers each), all on one ``Sora`` instance; every
receiver decodes its video tracks through a ``SoraVideoSink``. The local Sora
server (the SFU) runs in a child process, so the numbers below are the SDK's:
CPU (process CPU time / wall time, over the steady phase) and resident memory
per connection. Every 5 s: every connection still "connected", no
on_disconnect; at the end every receiver must still be receiving video.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List

import numpy as np
import pytest

import sora_sdk
from tests.conftest import Recorder, wait_until

from rel_probe import ServerProcess, cpu_seconds, fd_count, rss_kb, run_in_child, task_count

SECONDS = float(os.environ.get("RELIABILITY_LOAD_SECONDS", "120"))
CHANNELS = 5
SENDERS_PER_CHANNEL = 2
RECEIVERS_PER_CHANNEL = 8
W, H, FPS = 160, 120, 15
RAMP_LIMIT = 120.0

pytestmark = pytest.mark.timeout(int(SECONDS + RAMP_LIMIT) + 260)


class Feeder:
    """One thread feeding every sender: a moving box at 15 fps and 1/15 s of audio per tick."""

    def __init__(self, sources) -> None:
        self.sources = sources
        self.frames = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, name="reliability-load-feeder", daemon=True)
        self.thread.start()

    def run(self) -> None:
        frame = np.zeros((H, W, 3), np.uint8)
        frame[:, : W // 2] = (40, 160, 220)
        chunk = np.zeros((48000 // FPS, 1), np.int16)
        next_tick = time.monotonic()
        n = 0
        while not self.stop_event.is_set():
            n += 1
            frame[40:72, :] = 0
            x = (n * 4) % (W - 32)
            frame[40:72, x:x + 32] = 255
            for video, audio in self.sources:
                video.on_captured(frame)
                audio.on_data(chunk)
            self.frames = n
            next_tick += 1 / FPS
            delay = next_tick - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
            else:
                next_tick = time.monotonic()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)


def run_load() -> dict:
    """The load itself (in a process of their own, see rel_probe.run_in_child)."""
    server = ServerProcess()
    sora = sora_sdk.Sora()
    conns: List[Any] = []
    recs: List[Recorder] = []
    frames: Dict[int, int] = {}
    sinks: List[Any] = []
    lock = threading.Lock()
    feeder = None
    problems: List[str] = []
    try:
        rss_before = rss_kb()
        fds_before, tasks_before = fd_count(), task_count()
        sources = []
        ramp = time.monotonic()
        for channel in range(CHANNELS):
            channel_id = "load-%d" % channel
            for _ in range(SENDERS_PER_CHANNEL):
                video = sora.create_video_source()
                audio = sora.create_audio_source(1, 48000)
                sources.append((video, audio))
                conn = sora.create_connection(signaling_urls=[server.url], role="sendonly", channel_id=channel_id,
                                              video_source=video, audio_source=audio, video_codec_type="VP8",
                                              video_bit_rate=150, audio_bit_rate=24)
                conns.append(conn)
                recs.append(Recorder(conn))
            for _ in range(RECEIVERS_PER_CHANNEL):
                conn = sora.create_connection(signaling_urls=[server.url], role="recvonly", channel_id=channel_id,
                                              video_codec_type="VP8")
                rec = Recorder(conn)
                index = len(conns)
                frames[index] = 0

                def on_track(track, index=index, rec=rec):
                    rec._record("track", track)
                    if track.kind != "video":
                        return
                    sink = sora_sdk.SoraVideoSink(track)

                    def on_frame(frame, index=index):
                        with lock:
                            frames[index] += 1
                    sink.on_frame = on_frame
                    with lock:
                        sinks.append(sink)
                conn.on_track = on_track
                conns.append(conn)
                recs.append(rec)
        feeder = Feeder(sources)
        for conn in conns:
            conn.connect()
        # the ramp (7 s on CPython, 13 s on PyPy on 2 quiet cores) has RAMP_LIMIT in all
        ramp_deadline = time.monotonic() + RAMP_LIMIT

        def left() -> float:
            return max(ramp_deadline - time.monotonic(), 0.1)

        assert wait_until(lambda: all(r.connected.is_set() for r in recs), left()), \
            [i for i, r in enumerate(recs) if not r.connected.is_set()]
        assert wait_until(lambda: all(c.connection_state == "connected" for c in conns), left()), \
            [(i, c.connection_state) for i, c in enumerate(conns) if c.connection_state != "connected"]
        assert wait_until(lambda: all(frames[i] > 0 for i in frames), left()), frames
        ramp_took = time.monotonic() - ramp
        time.sleep(2)
        rss_connected = rss_kb(trim=False)
        fds_connected, tasks_connected = fd_count(), task_count()
        cpu0, server_cpu0, wall0 = cpu_seconds(), server.cpu_seconds(), time.monotonic()
        frames0 = dict(frames)
        rss_peak = rss_connected
        last_check = dict(frames)
        stalls = 0
        while time.monotonic() - wall0 < SECONDS:
            time.sleep(5)
            rss_peak = max(rss_peak, rss_kb(trim=False))
            dropped = [i for i, r in enumerate(recs) if r.disconnected.is_set()]
            if dropped:
                problems.append("dropped at %.0f s: %r" % (time.monotonic() - wall0,
                                                            [(i, recs[i].disconnect) for i in dropped]))
                break
            not_connected = [i for i, c in enumerate(conns) if c.connection_state != "connected"]
            if not_connected:
                problems.append("not connected at %.0f s: %r" % (time.monotonic() - wall0, not_connected))
                break
            with lock:
                now = dict(frames)
            stalls += sum(1 for i in now if now[i] == last_check[i])
            last_check = now
        wall = time.monotonic() - wall0
        cpu = cpu_seconds() - cpu0
        server_cpu = server.cpu_seconds() - server_cpu0
        rss_end = rss_kb(trim=False)
        with lock:
            received = {i: frames[i] - frames0[i] for i in frames}
        sent_frames = feeder.frames
    finally:
        if feeder is not None:
            feeder.stop()
        ends = []
        for conn, rec in zip(conns, recs):
            conn.disconnect()
            ends.append(rec.disconnect)
        for sink in sinks:
            sink.close()
        sora.close()
        server.close()
    return {"n": len(conns), "received": sorted(received.values()), "problems": problems,
            "ends": [[e[0].name, e[1]] if e is not None else None for e in ends], "ramp": ramp_took, "wall": wall,
            "cpu": cpu, "server_cpu": server_cpu, "rss": [rss_before, rss_connected, rss_end, rss_peak],
            "fds": [fds_before, fds_connected], "tasks": [tasks_before, tasks_connected], "sent": sent_frames,
            "stalls": stalls}


def test_fifty_concurrent_connections(report):
    r = run_in_child("check_load", "run_load", timeout=SECONDS + RAMP_LIMIT + 200)
    n, wall, cpu, per_receiver, problems = r["n"], r["wall"], r["cpu"], r["received"], r["problems"]
    rss_before, rss_connected, rss_end, rss_peak = r["rss"]
    report.add("load", "connections (senders + receivers, channels), in one process of their own",
               "%d (%d + %d, %d)" % (n, CHANNELS * SENDERS_PER_CHANNEL, CHANNELS * RECEIVERS_PER_CHANNEL, CHANNELS))
    report.add("load", "media", "senders %dx%d VP8 @ %d fps + Opus; receivers decode video (SoraVideoSink)" % (
        W, H, FPS))
    report.add("load", "steady phase", "%.0f s (RELIABILITY_LOAD_SECONDS=%g)" % (wall, SECONDS))
    report.add("load", "ramp: 50 connect() -> all connected + video decoded everywhere", "%.1f s" % r["ramp"])
    report.add("load", "dropped connections", len(problems))
    report.add("load", "SDK process CPU (CPU time / wall)", "%.0f %% of one core (%.1f %% per connection)" % (
        100 * cpu / wall, 100 * cpu / wall / n))
    report.add("load", "server child process CPU (not asserted)", "%.0f %% of one core" % (
        100 * r["server_cpu"] / wall))
    report.add("load", "SDK RSS before -> all connected -> end (peak)", "%.1f -> %.1f -> %.1f MiB (%.1f)" % (
        rss_before / 1024, rss_connected / 1024, rss_end / 1024, rss_peak / 1024))
    report.add("load", "RSS per connection", "%.2f MiB" % ((rss_connected - rss_before) / 1024 / n))
    report.add("load", "fds / threads (tasks) before -> connected", "%d -> %d / %d -> %d" % (
        r["fds"][0], r["fds"][1], r["tasks"][0], r["tasks"][1]))
    report.add("load", "video frames decoded per receiver in the steady phase (min / median / max)",
               "%d / %d / %d (the feeder pushed %d frames per sender in all)" % (
                   per_receiver[0], per_receiver[len(per_receiver) // 2], per_receiver[-1], r["sent"]))
    report.add("load", "5 s windows where a receiver got no frame", r["stalls"])
    assert not problems, problems
    assert all(e is not None and e[0] == "CLOSE_SUCCEEDED" for e in r["ends"]), r["ends"]
    # every receiver kept receiving video all along (frame rates themselves depend on the machine's load)
    assert per_receiver[0] >= wall, per_receiver
