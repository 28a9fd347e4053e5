"""`make bench`: measure the SDK against the embedded local Sora server and write benchmarks/RESULTS.md.

Everything runs in this process over loopback: the local server (its own
engine context), one or two SDK clients, real codecs. Numbers are medians.
Set SORA_BENCH_SECONDS to change the length of the streaming runs (default 8).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import sora_sdk  # noqa: E402
from benchmarks import sfu_fanout  # noqa: E402
from benchmarks import aio_latency  # noqa: E402
from benchmarks import codec_floor  # noqa: E402
from benchmarks.common import Client, cpu_model, cpu_seconds  # noqa: E402
from sora_sdk.testing import LocalSora  # noqa: E402

RESULTS = os.path.join(HERE, "RESULTS.md" if platform.python_implementation() == "CPython" else "RESULTS-pypy.md")
SECONDS = float(os.environ.get("SORA_BENCH_SECONDS", "8"))


def bench_connect(server, runs: int = 5) -> dict:
    samples = []
    with sora_sdk.Sora() as sora:
        for _ in range(runs):
            client = Client(sora, server.signaling_url, role="recvonly", channel_id="bench-connect")
            samples.append(client.start())
            client.conn.disconnect()
    return {"connect() to connection.created, median ms": statistics.median(samples) * 1000,
            "min ms": min(samples) * 1000, "max ms": max(samples) * 1000}


def bench_on_captured(width: int, height: int, runs: int = 200) -> float:
    """µs per on_captured() call with no connection attached (copy + hand-off only)."""
    frame = np.zeros((height, width, 3), np.uint8)
    with sora_sdk.Sora() as sora:
        source = sora.create_video_source()
        for _ in range(10):
            source.on_captured(frame)
        begin = time.perf_counter()
        for _ in range(runs):
            source.on_captured(frame)
        return (time.perf_counter() - begin) / runs * 1e6


def bench_send(server, codec: str, width: int, height: int, fps: int = 30) -> dict:
    """CPU of this process (SDK encode + local server receive) while sending for SECONDS."""
    frame = np.zeros((height, width, 3), np.uint8)
    x = np.arange(width, dtype=np.uint16)
    with sora_sdk.Sora() as sora:
        video = sora.create_video_source()
        client = Client(sora, server.signaling_url, role="sendonly", channel_id="bench-send", video_source=video,
                        audio=False, video_codec_type=codec, video_bit_rate=1000)
        client.start()
        frames = 0
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        while time.perf_counter() - t0 < SECONDS:
            frame[:, :, 0] = ((x + frames * 4) % 256).astype(np.uint8)
            frame[:, :, 1] = 128
            frame[(frames * 3) % (height - 40):(frames * 3) % (height - 40) + 40, :, 2] = 255
            video.on_captured(frame)
            frames += 1
            time.sleep(max(0.0, t0 + frames / fps - time.perf_counter()))
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        stats = json.loads(client.conn.get_stats())
        client.conn.disconnect()
    sent = sum(s.get("bytesSent", 0) for s in stats if s["type"] == "outbound-rtp" and s.get("kind") == "video")
    return {"codec": codec, "size": "%dx%d" % (width, height), "fps sent": frames / elapsed,
            "CPU % of one core": cpu / elapsed * 100, "video kbit/s": sent * 8 / elapsed / 1000}


def bench_data_channel(server, size: int, count: int) -> dict:
    """`#` messages A -> server -> B; B echoes; round trip measured at A (sequential), then one-way throughput."""
    channels = [{"label": "#bench", "direction": "sendrecv"}]
    with sora_sdk.Sora() as sora:
        a = Client(sora, server.signaling_url, role="sendrecv", channel_id="bench-dc", data_channel_signaling=True,
                   data_channels=channels, audio=False, video=False)
        b = Client(sora, server.signaling_url, role="sendrecv", channel_id="bench-dc", data_channel_signaling=True,
                   data_channels=channels, audio=False, video=False)
        a.start()
        b.start()
        if not (a.channel_open.wait(10) and b.channel_open.wait(10)):
            raise RuntimeError("data channels did not open")
        b.conn.on_message = lambda label, data: b.conn.send_data_channel(label, data)
        payload = bytes(size)
        rtts = []
        for i in range(min(count, 200)):
            before = len(a.messages)
            start = time.perf_counter()
            a.conn.send_data_channel("#bench", payload)
            deadline = start + 5
            while len(a.messages) == before and time.perf_counter() < deadline:
                time.sleep(0.0002)
            if len(a.messages) > before:
                rtts.append(a.messages[-1][0] - start)
        b.conn.on_message = lambda label, data: b.messages.append((time.perf_counter(), data))
        b.messages.clear()
        start = time.perf_counter()
        sent = 0
        for _ in range(count):
            if a.conn.send_data_channel("#bench", payload):
                sent += 1
        deadline = time.perf_counter() + 30
        while len(b.messages) < sent and time.perf_counter() < deadline:
            time.sleep(0.001)
        elapsed = (b.messages[-1][0] if b.messages else time.perf_counter()) - start
        got = len(b.messages)
        a.conn.disconnect()
        b.conn.disconnect()
    return {"message bytes": size, "round trip p50 ms": statistics.median(rtts) * 1000 if rtts else float("nan"),
            "messages/s": got / elapsed, "MB/s": got * size / elapsed / 1e6, "delivered": "%d/%d" % (got, sent)}


def table(rows) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [("%.1f" % v) if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    model = cpu_model()
    engine = sora_sdk.sora.engine_version()
    return "%s, %d cores; %s %s; %s; sora_sdk %s" % (
        model, os.cpu_count() or 0, platform.python_implementation(), platform.python_version(), engine,
        sora_sdk.__version__)


def _kept_section() -> str:
    """The section that `make bench-compare` (benchmarks/compare.py) keeps between its markers, to carry over."""
    try:
        with open(RESULTS, encoding="utf-8") as f:
            current = f.read()
    except OSError:
        return ""
    begin, end = "<!-- bench-compare:begin -->", "<!-- bench-compare:end -->"
    start, stop = current.find(begin), current.find(end)
    return current[start:stop + len(end)] + "\n" if 0 <= start < stop else ""


def main() -> int:
    sections = ["# Benchmark results", "", "Machine: " + machine(), "",
                "Measured by `make bench` (benchmarks/run.py) over loopback against the embedded local server; "
                "CPU covers the whole process (SDK + local server).", ""]
    with LocalSora() as server:
        sections += ["## Connect", "", table([bench_connect(server)]), ""]
        sections += ["## on_captured() cost (copy and hand-off, no connection)", "",
                     table([{"size": "%dx%d" % s, "µs per call": bench_on_captured(*s)}
                            for s in ((640, 480), (1280, 720))]), ""]
        sends = [bench_send(server, codec, w, h) for codec in ("VP8", "VP9", "H264")
                 for (w, h) in ((640, 480), (1280, 720))]
        sections += ["## Sending (%.0f s each, 30 fps target, 1 Mbit/s)" % SECONDS, "", table(sends), ""]
        dcs = [bench_data_channel(server, 100, 5000), bench_data_channel(server, 65536, 300)]
        sections += ["## Data channel `#` messages through the local server", "", table(dcs), ""]
    sections += ["## asyncio: event-loop latency while frames flow (sora_sdk.aio, slow consumer)", "",
                 table([aio_latency.measure(SECONDS)]), ""]
    sections += [sfu_fanout.report([1, 4, 16], min(SECONDS, 6.0), 1000)]
    sections += [codec_floor.report(min(SECONDS, 4.0))]
    text = "\n".join(sections)
    kept = _kept_section()
    with open(RESULTS, "w", encoding="utf-8") as f:
        f.write(text + "\n" + ("\n" + kept if kept else ""))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
