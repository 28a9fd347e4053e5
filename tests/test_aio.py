"""sora_sdk.aio against the local server: connect, failure and cancel, frames with a slow consumer (drops counted,
the loop stays responsive), data-channel backpressure, tracks/events/messages, and shutdown leaving nothing."""
from __future__ import annotations

import asyncio
import gc
import platform
import threading
import time

import numpy as np
import pytest

import sora_sdk
from sora_sdk import SoraSignalingErrorCode as Code
from sora_sdk.aio import AsyncSora, ConnectionFailed, DataChannel, Disconnected, Push
from tests.conftest import Recorder, wait_until
from tests.media_pump import Pump

DC = {"audio": False, "video": False, "data_channel_signaling": True,
      "data_channels": [{"label": "#chat", "direction": "sendrecv"}]}


def run(coro, timeout: float = 60.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


@pytest.fixture
def sender(local_sora):
    """A sendonly connection (sync API, a Sora of its own) streaming 320x240 video at 30 fps and audio."""
    sora = sora_sdk.Sora()
    video = sora.create_video_source()
    audio = sora.create_audio_source(1, 48000)
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendonly", channel_id="aio",
                                  video_source=video, audio_source=audio)
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    pump = Pump(video, audio, ((0, 0, 255), (255, 0, 0)))
    try:
        yield conn
    finally:
        pump.stop()
        conn.disconnect()
        sora.close()


def test_connect_stats_and_disconnect(local_sora):
    async def main():
        async with AsyncSora() as sora:
            conn = await sora.connect(signaling_urls=[local_sora.signaling_url], role="sendrecv",
                                      channel_id="aio-basic", **DC)
            assert local_sora.connections("aio-basic")
            stats = await conn.get_stats()
            assert isinstance(stats, list) and any(s.get("type") == "transport" for s in stats)
            await conn.disconnect()
            await conn.disconnect()  # idempotent
            assert conn.ended is not None and conn.ended.code == Code.CLOSE_SUCCEEDED
            return conn
    conn = run(main())
    assert conn.connection.connection_state == "closed"
    assert wait_until(lambda: not local_sora.connections("aio-basic"), 10)


def test_connect_failure_raises_connection_failed():
    async def main():
        async with AsyncSora() as sora:
            with pytest.raises(ConnectionFailed) as info:
                await sora.connect(signaling_urls=["ws://127.0.0.1:1/signaling"], role="recvonly", channel_id="x")
            return info.value
    failure = run(main())
    assert failure.code == Code.WEBSOCKET_HANDSHAKE_FAILED, failure


def test_cancelled_connect_disconnects(local_sora):
    async def main():
        sora = AsyncSora()
        task = asyncio.ensure_future(sora.connect(signaling_urls=[local_sora.signaling_url], role="recvonly",
                                                  channel_id="aio-cancel"))
        await asyncio.sleep(0)  # connect() has started connecting and waits for connection.created
        assert not task.done(), task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sora.close()
    run(main())
    assert wait_until(lambda: not local_sora.connections("aio-cancel"), 10)


@pytest.fixture
def remote_sender():
    """The local server and a 640x480 30 fps sender (the demo, --role sendonly), each in a process of its own,
    so that this process holds only the SDK's threads and the event loop (what the loop-latency check is about)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "reliability"))
    from rel_probe import DemoSender, ServerProcess

    server = ServerProcess()
    sender = DemoSender(server.url, "aio-remote", 60)
    try:
        yield server.url
    finally:
        sender.close()
        server.close()


def test_frames_with_a_slow_consumer_are_dropped_and_counted_while_the_loop_stays_responsive(remote_sender):
    async def ticker(lateness, stop):
        while not stop.is_set():
            started = time.monotonic()
            await asyncio.sleep(0.01)
            lateness.append(time.monotonic() - started - 0.01)

    async def measure(seconds, work=None):
        lateness, stop = [], asyncio.Event()
        tick = asyncio.ensure_future(ticker(lateness, stop))
        if work is None:
            await asyncio.sleep(seconds)
        else:
            await work(seconds)
        stop.set()
        await tick
        return sorted(lateness)

    async def main():
        async with AsyncSora() as sora:
            conn = await sora.connect(signaling_urls=[remote_sender], role="recvonly", channel_id="aio-remote")
            video = None
            async for track in conn.tracks():
                if track.kind == "video":
                    video = track
                    break
            baseline = await measure(3)  # the same loop before any frame is decoded for it: the machine's share
            frames = conn.frames(video, capacity=2)
            got = []
            warm = time.monotonic()
            async for frame in frames:  # steady state first (PyPy's JIT compiles the hot paths meanwhile)
                got.append(frame.data().shape)
                if time.monotonic() - warm > 3:
                    break

            async def consume(seconds):
                started = time.monotonic()
                async for frame in frames:
                    got.append(frame.data().shape)
                    await asyncio.sleep(0.1)  # a consumer 3x slower than the stream
                    if time.monotonic() - started > seconds:
                        break
            flowing = await measure(4, consume)
            return got, conn.dropped(video), baseline, flowing
    got, dropped, baseline, flowing = run(main())
    assert len(got) >= 60 and all(shape == (480, 640, 3) for shape in got), got[:3]
    assert dropped >= 30, dropped  # ~120 frames came in 4 s, ~40 were taken

    def p99(values):
        return values[int(len(values) * 0.99) - 1]
    print("loop lateness of a 10 ms sleep, p50 / p99 / max: before frames %.2f / %.2f / %.2f ms, while frames flow "
          "%.2f / %.2f / %.2f ms" % tuple(1000 * v for v in (baseline[len(baseline) // 2], p99(baseline),
                                                              baseline[-1], flowing[len(flowing) // 2],
                                                              p99(flowing), flowing[-1])))
    # The 5 ms p99 target is a speed goal, judged by `make bench` (benchmarks/aio_latency.py, RESULTS.md) on a quiet
    # machine. This test checks what the SDK adds to the loop's p99 over the same loop without frames, measured
    # just before in the same process (so a busy machine raises both): at most 5 ms (PyPy, whose collector's major
    # steps stop any thread now and then: 10 ms).
    allowed = 0.005 if platform.python_implementation() == "CPython" else 0.010
    assert p99(flowing) < p99(baseline) + allowed, "loop latency p99 %.1f ms while frames flow, %.1f ms before" % (
        p99(flowing) * 1000, p99(baseline) * 1000)


def test_tracks_events_and_audio_frames(local_sora, sender):
    async def main():
        async with AsyncSora() as sora:
            conn = await sora.connect(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="aio")
            events = conn.events()
            kinds = set()
            async for track in conn.tracks():
                kinds.add(track.kind)
                if len(kinds) == 2:
                    break
            audio = next(t for t in conn._tracks if t.kind == "audio")
            frames = 0
            async for frame in conn.frames(audio):
                assert frame.samples_per_channel == 480 and frame.sample_rate_hz == 48000
                frames += 1
                if frames == 20:
                    break
            local_sora.push("aio", {"hello": 1})
            seen = []
            async for event in events:
                seen.append(event)
                if isinstance(event, Push):
                    break
            await conn.disconnect()
            rest = [e async for e in events]
            return kinds, seen, rest
    kinds, seen, rest = run(main())
    assert kinds == {"audio", "video"}
    assert seen[-1].message.get("data") == {"hello": 1}, seen[-1]
    assert isinstance(rest[-1], Disconnected) and rest[-1].code == Code.CLOSE_SUCCEEDED, rest


def test_data_channel_backpressure_loses_no_message(local_sora):
    count, size = 600, 16 * 1024

    async def main():
        async with AsyncSora() as sora:
            rx = await sora.connect(signaling_urls=[local_sora.signaling_url], role="sendrecv",
                                    channel_id="aio-dc", **DC)
            tx = await sora.connect(signaling_urls=[local_sora.signaling_url], role="sendrecv",
                                    channel_id="aio-dc", **DC)
            received = []

            async def receive():
                async for label, data in rx.messages("#chat"):
                    received.append(int.from_bytes(data[:4], "big"))
                    if len(received) == count:
                        return

            reader = asyncio.ensure_future(receive())
            events = tx.events()
            async for event in events:  # both ends' #chat open
                if isinstance(event, DataChannel) and event.label == "#chat":
                    break
            await asyncio.sleep(0.5)
            started = time.monotonic()
            payload = bytearray(size)
            for n in range(count):
                payload[:4] = n.to_bytes(4, "big")
                assert await tx.send("#chat", bytes(payload), threshold=256 * 1024)
            await asyncio.wait_for(reader, 60)
            took = time.monotonic() - started
            return received, took
    received, took = run(main(), timeout=120)
    assert received == list(range(count))  # all of them, in order
    print("aio data channel: %d x %d B in %.2f s (%.1f MB/s)" % (count, size, took, count * size / took / 1e6))


def test_leaving_the_loop_with_live_connections_leaves_nothing(local_sora):
    """asyncio.run() returns with connections still up and no close(): the objects go with the loop, the
    connections end, and no thread or descriptor of theirs is left."""
    import os

    def counts():  # native threads (Python's count keeps a dummy entry per foreign thread that called back)
        return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))

    async def main():
        sora = AsyncSora()
        for _ in range(3):
            await sora.connect(signaling_urls=[local_sora.signaling_url], role="sendrecv", channel_id="aio-leave",
                               **DC)
        assert len(local_sora.connections("aio-leave")) == 3
    run(main())  # warm-up (engine, reaper)
    assert wait_until(lambda: (gc.collect() or True) and not local_sora.connections("aio-leave"), 15)
    time.sleep(1.0)
    gc.collect()
    before = counts()
    run(main())
    assert wait_until(lambda: (gc.collect() or True) and not local_sora.connections("aio-leave"), 15)
    assert wait_until(lambda: (gc.collect() or True) and all(a <= b for a, b in zip(counts(), before)), 15), \
        (before, counts(), [t.name for t in threading.enumerate()])


def test_video_capture_from_a_coroutine(local_sora):
    async def main():
        async with AsyncSora() as sora:
            video = sora.create_video_source()
            conn = await sora.connect(signaling_urls=[local_sora.signaling_url], role="sendonly",
                                      channel_id="aio-capture", video_source=video, audio=False)
            frame = np.zeros((480, 640, 3), np.uint8)
            for _ in range(10):
                await video.capture(frame)
            assert video._frames() >= 10
            await conn.disconnect()
    run(main())


def test_the_aio_demo_runs():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "sora_sdk.aio_demo", "--seconds", "3"], cwd=str(root),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "received: video frames" in done.stdout
