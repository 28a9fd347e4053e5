"""asyncio load (issue 15): 50 concurrent connections driven by one event loop for AIO_LOAD_SECONDS (60), none dropped.

50 sendrecv connections over 5 channels on one AsyncSora, in a process of their own (the local server in a
child): 5 of them send 160x120 video + audio captured from coroutines, the others iterate the frames of one
remote video track; every connection sends a `#load` message each second and iterates its messages and events.
Every 5 s every connection must still be up; at the end each one must have received messages all along, and
the loop's latency (how late a 10 ms sleep wakes) is reported.
"""
from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from rel_probe import ServerProcess, cpu_seconds, run_in_child

SECONDS = float(os.environ.get("AIO_LOAD_SECONDS", "60"))
CONNECTIONS, CHANNELS, SENDERS = 50, 5, 5

pytestmark = pytest.mark.timeout(int(SECONDS) + 300)


async def load(url: str) -> dict:
    from sora_sdk.aio import AsyncSora, Disconnected

    chat = {"data_channel_signaling": True, "data_channels": [{"label": "#load", "direction": "sendrecv"}]}
    problems, lateness = [], []
    received = [0] * CONNECTIONS
    frames = [0] * CONNECTIONS
    stop = asyncio.Event()
    async with AsyncSora() as sora:
        sources = []
        for _ in range(SENDERS):
            sources.append((sora.create_video_source(), sora.create_audio_source(1, 48000)))
        started = time.monotonic()
        connects = []
        for n in range(CONNECTIONS):
            kwargs = dict(chat)
            if n < SENDERS:
                kwargs.update(video_source=sources[n][0], audio_source=sources[n][1], video_codec_type="VP8")
            else:
                kwargs.update(audio=False)
            connects.append(sora.connect(signaling_urls=[url], role="sendrecv", channel_id="load-%d" % (n % CHANNELS),
                                         **kwargs))
        conns = await asyncio.gather(*connects)
        ramp = time.monotonic() - started

        async def capture() -> None:
            frame = np.full((120, 160, 3), 100, np.uint8)
            silence = np.zeros((480, 1), np.int16)
            while not stop.is_set():
                for video, audio in sources:
                    video.on_captured(frame)
                    for _ in range(3):
                        audio.on_data(silence)
                await asyncio.sleep(1 / 30)

        async def talk(n: int, conn) -> None:
            while not stop.is_set():
                await conn.send("#load", b"from %d" % n)
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass

        async def listen(n: int, conn) -> None:
            async for _label, _data in conn.messages("#load"):
                received[n] += 1

        async def watch(n: int, conn) -> None:
            async for event in conn.events():
                if isinstance(event, Disconnected) and not stop.is_set():
                    problems.append((n, event.code.name, event.message))

        async def view(n: int, conn) -> None:
            async for track in conn.tracks():
                if track.kind == "video":
                    async for _frame in conn.frames(track):
                        frames[n] += 1
                    return

        async def ticker() -> None:
            while not stop.is_set():
                before = time.monotonic()
                await asyncio.sleep(0.01)
                lateness.append(time.monotonic() - before - 0.01)

        tasks = [asyncio.ensure_future(capture()), asyncio.ensure_future(ticker())]
        for n, conn in enumerate(conns):
            tasks += [asyncio.ensure_future(talk(n, conn)), asyncio.ensure_future(listen(n, conn)),
                      asyncio.ensure_future(watch(n, conn))]
            if n >= SENDERS:
                tasks.append(asyncio.ensure_future(view(n, conn)))
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        checks = 0
        while time.monotonic() - wall0 < SECONDS:
            await asyncio.sleep(5)
            checks += 1
            down = [n for n, c in enumerate(conns) if c.ended is not None]
            if down:
                problems.append(("down at check %d" % checks, down))
                break
        cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
        stop.set()
        for conn in conns:
            await conn.disconnect()
        await asyncio.gather(*tasks, return_exceptions=True)
        ends = [c.ended.code.name if c.ended else None for c in conns]
    lateness.sort()
    return {"ramp": ramp, "wall": wall, "cpu": cpu, "problems": problems, "received": sorted(received),
            "frames": sorted(frames[SENDERS:]), "ends": ends,
            "lateness": [lateness[len(lateness) // 2], lateness[int(len(lateness) * 0.99) - 1], lateness[-1]]}


def run_load() -> dict:
    server = ServerProcess()
    try:
        return asyncio.run(load(server.url))
    finally:
        server.close()


def test_fifty_connections_in_one_loop(report):
    r = run_in_child("check_aio_load", "run_load", timeout=SECONDS + 280)
    p50, p99, worst = r["lateness"]
    report.add("asyncio load", "connections in one event loop (video senders, channels)", "%d (%d, %d)" % (
        CONNECTIONS, SENDERS, CHANNELS))
    report.add("asyncio load", "ramp: gather(50 x connect())", "%.1f s" % r["ramp"])
    report.add("asyncio load", "steady phase, dropped connections", "%.0f s, %d" % (r["wall"], len(r["problems"])))
    report.add("asyncio load", "process CPU (CPU time / wall)", "%.0f %% of one core" % (100 * r["cpu"] / r["wall"]))
    report.add("asyncio load", "#load messages received per connection (min / median / max)", "%d / %d / %d" % (
        r["received"][0], r["received"][len(r["received"]) // 2], r["received"][-1]))
    report.add("asyncio load", "video frames iterated per viewer (min / median)", "%d / %d" % (
        r["frames"][0], r["frames"][len(r["frames"]) // 2]))
    report.add("asyncio load", "loop lateness of a 10 ms sleep: p50 / p99 / max", "%.1f / %.1f / %.1f ms" % (
        p50 * 1000, p99 * 1000, worst * 1000))
    assert not r["problems"], r["problems"]
    assert all(e == "CLOSE_SUCCEEDED" for e in r["ends"]), r["ends"]
    # each connection hears the other 9 of its channel once a second
    assert r["received"][0] >= 9 * r["wall"] * 0.5, r["received"][:5]
    assert r["frames"][0] > 0, r["frames"][:5]
