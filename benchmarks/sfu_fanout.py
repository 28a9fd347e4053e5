"""SFU fan-out: one 640x480@30 VP8 (+ Opus) sender through the local Sora server to N receivers.

    python benchmarks/sfu_fanout.py [--receivers 1,4,16] [--seconds 6] [--bitrate 1000]

The server runs as a subprocess (``python -m sora_sdk.testing``) so its CPU time
can be read from /proc/<pid>/stat apart from the clients, which all live in
this process (our SDK: one encoder, N decoders). For each N the sender joins a
fresh channel, the receivers follow, and after a warm-up the server's CPU time
is measured over a window. N = 0 (the sender alone: the server only receives
and decrypts) is the baseline, so

    server CPU per receiver = (CPU(N) - CPU(0)) / N

is the cost of forwarding one video + one audio stream to one more receiver.

Latency: the sender stamps a 24-bit frame counter into the top-left pixels
(16x16 black/white blocks) and remembers when it pushed each frame; a
receiver reads the counter back from the decoded picture, which gives
glass-to-glass latency (push -> encode -> server -> decode -> BGR frame). The
same measurement over a direct peer-to-peer path (two engine peers, same
encoder settings, no server) is the baseline, and the difference is the
latency the SFU hop adds. Only the first DECODING receivers decode (and give
latency and fps); the others receive, decrypt and jitter-buffer but do not
decode, so that 16 receivers fit on a small machine next to the server.
Output: a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import sora_sdk  # noqa: E402
from benchmarks.common import Client, ServerProcess, cpu_seconds  # noqa: E402
from sora_sdk._ffi import check, ffi, lib  # noqa: E402
from sora_sdk.context import Context  # noqa: E402
from sora_sdk.media.sink import EngineSink, frame_view  # noqa: E402
from sora_sdk.peer import Peer  # noqa: E402

W, H, FPS = 640, 480, 30
BITS = 24
BLOCK = 16
DECODING = 4  # receivers that decode (latency, fps); the rest only receive


# ---------------------------------------------------------------------------- frames
def backgrounds(count: int = 30) -> List[np.ndarray]:
    """Moving content (gradients and a box), so the encoder works as it would on a camera."""
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for i in range(count):
        frame = np.empty((H, W, 3), np.uint8)
        frame[:, :, 0] = ((xx + i * 6) % 256).astype(np.uint8)
        frame[:, :, 1] = ((yy + i * 3) % 256).astype(np.uint8)
        frame[:, :, 2] = (((xx + yy) // 2 + i * 4) % 256).astype(np.uint8)
        x = (i * 16) % (W - 96)
        frame[200:296, x:x + 96] = 255
        frames.append(frame)
    return frames


def stamp(frame: np.ndarray, counter: int) -> None:
    for bit in range(BITS):
        value = 255 if (counter >> bit) & 1 else 0
        frame[0:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = value


def read_stamp(frame: np.ndarray) -> int:
    cells = frame[4:BLOCK - 4, : BITS * BLOCK].reshape(BLOCK - 8, BITS, BLOCK, 3)[:, :, 4:BLOCK - 4]
    bits = cells.mean(axis=(0, 2, 3)) > 128
    return int(sum(1 << i for i, on in enumerate(bits) if on))


class Stamper:
    """Pushes stamped frames (and Opus-bound audio) in real time; remembers each frame's push time.
    `content`: the looped pictures (default: backgrounds() at W x H)."""

    def __init__(self, push_video, push_audio=None, content: Optional[List[np.ndarray]] = None) -> None:
        self.push_video = push_video
        self.push_audio = push_audio
        self.sent: Dict[int, float] = {}
        self.frames = 0
        self._backgrounds = content if content is not None else backgrounds()
        self._buffer = np.empty_like(self._backgrounds[0])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-stamper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        samples = 0
        next_video = start
        tone = (np.sin(2 * np.pi * 440 * np.arange(48000) / 48000) * 6000).astype(np.int16)
        while not self._stop.is_set():
            now = time.perf_counter()
            if self.push_audio is not None:
                while int((now - start) * 48000) - samples >= 480:
                    offset = samples % 48000
                    chunk = tone[offset:offset + 480]
                    if len(chunk) < 480:
                        chunk = np.concatenate([chunk, tone[: 480 - len(chunk)]])
                    self.push_audio(chunk.reshape(-1, 1))
                    samples += 480
            if now >= next_video:
                counter = self.frames + 1
                np.copyto(self._buffer, self._backgrounds[counter % len(self._backgrounds)])
                stamp(self._buffer, counter)
                self.sent[counter] = time.perf_counter()
                self.push_video(self._buffer)
                self.frames = counter
                next_video = max(next_video + 1.0 / FPS, now)
            time.sleep(max(0.0, min(next_video - time.perf_counter(), 0.01)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class LatencyMeter:
    """What on_frame does: read the counter back, keep the latency while recording. `stamper` may be set
    after the meter is made (a sink that exists before the frames start)."""

    def __init__(self, stamper: Optional[Stamper] = None) -> None:
        self.stamper = stamper
        self.lock = threading.Lock()
        self.samples: List[float] = []
        self.frames = 0
        self.recording = False

    def on_bgr(self, frame: np.ndarray) -> None:
        now = time.perf_counter()
        counter = read_stamp(frame)
        stamper = self.stamper
        sent = stamper.sent.get(counter) if stamper is not None else None
        with self.lock:
            if not self.recording:
                return
            self.frames += 1
            if sent is not None and 0 <= now - sent < 5:
                self.samples.append((now - sent) * 1000)

    def start(self) -> None:
        with self.lock:
            self.recording = True
            self.samples, self.frames = [], 0

    def stop(self) -> None:
        with self.lock:
            self.recording = False


def percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------- direct baseline
def direct_latency(seconds: float, bitrate: int) -> Dict[str, float]:
    """Two engine peers in this process, no server: the latency the SFU is compared with."""
    ctx = Context()
    peers: Dict[str, Peer] = {}
    tracks: List[int] = []

    def relay(name: str):
        def on_event(event) -> None:
            if event.name == "ice-candidate":
                other = peers["rx" if name == "tx" else "tx"]
                try:
                    other.add_ice_candidate(event.i0, event.str0)
                except Exception:
                    pass
            elif event.name == "track" and name == "rx":
                tracks.append(event.i0)
        return on_event

    out = ffi.new("sora_video_source **")
    check(lib.sora_video_source_create(ctx.ptr, out))
    source = out[0]
    rx = peers["rx"] = Peer(ctx, on_event=relay("rx"))
    tx = peers["tx"] = Peer(ctx, on_event=relay("tx"))
    rx.add_transceiver("video", "recvonly",
                       "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000")
    tx.set_remote_description("offer", rx.create_offer())
    tx.attach_video_source(source, 0, "VP8", 96, bitrate)
    tx.set_direction(0, "sendonly")
    rx.set_remote_description("answer", tx.create_answer())

    def push(frame: np.ndarray) -> None:
        check(lib.sora_video_source_push_bgr(source, ffi.from_buffer(frame), W, H, W * 3,
                                             int(time.time() * 1e6)))

    stamper = Stamper(push)
    meter = LatencyMeter(stamper)
    sinks = []
    deadline = time.monotonic() + 10
    while not tracks and time.monotonic() < deadline:
        time.sleep(0.05)
    if tracks:
        def on_frame(event) -> None:
            view = np.frombuffer(frame_view(event, event.size), np.uint8).reshape(event.i1, event.i0, 3)
            meter.on_bgr(view)
        sinks.append(EngineSink(ctx, rx, tracks[0], lib.SORA_SINK_VIDEO_BGR, on_frame))
    time.sleep(1.5)
    meter.start()
    time.sleep(seconds)
    meter.stop()
    stamper.stop()
    for sink in sinks:
        sink.close()
    tx.close()
    rx.close()
    check(lib.sora_video_source_destroy(source))
    ctx.close()
    return {"median": statistics.median(meter.samples) if meter.samples else float("nan"),
            "p95": percentile(meter.samples, 0.95), "fps": meter.frames / seconds}


# ---------------------------------------------------------------------------- the SFU runs
def fanout_run(sora, server: ServerProcess, receivers: int, seconds: float, bitrate: int) -> Dict[str, float]:
    channel = "fanout-%d" % receivers
    video = sora.create_video_source()
    audio = sora.create_audio_source(1, 48000)
    sender = Client(sora, server.signaling_url, channel_id=channel, role="sendonly", video_source=video,
                    audio_source=audio,
                    video_codec_type="VP8", video_bit_rate=bitrate)
    sender.start()
    stamper = Stamper(video.on_captured, audio.on_data)
    meters: List[LatencyMeter] = []
    members: List[Client] = []
    sinks: List = []
    time.sleep(0.5)
    for index in range(receivers):
        member = Client(sora, server.signaling_url, channel_id=channel, role="recvonly", video_codec_type="VP8")
        if index < DECODING:
            meter = LatencyMeter(stamper)

            def on_track(track, meter=meter) -> None:
                if track.kind != "video":
                    return
                sink = sora_sdk.SoraVideoSink(track)
                sink.on_frame = lambda frame, meter=meter: meter.on_bgr(frame.data())
                sinks.append(sink)

            member.conn.on_track = on_track
            meters.append(meter)
        member.start()
        members.append(member)
    time.sleep(2.0)  # forwards start, key frames, jitter buffers fill
    for meter in meters:
        meter.start()
    server0, client0, wall0 = server.cpu_seconds(), cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    server1, client1, wall1 = server.cpu_seconds(), cpu_seconds(), time.perf_counter()
    for meter in meters:
        meter.stop()
    stamper.stop()
    elapsed = wall1 - wall0
    for member in members + [sender]:
        member.conn.disconnect()
    for sink in sinks:
        sink.close()
    samples = [s for meter in meters for s in meter.samples]
    return {
        "server_cpu": 100.0 * (server1 - server0) / elapsed,
        "client_cpu": 100.0 * (client1 - client0) / elapsed,
        "fps_min": min((m.frames / elapsed for m in meters), default=float("nan")),
        "median": statistics.median(samples) if samples else float("nan"),
        "p95": percentile(samples, 0.95),
    }


def report(counts: List[int], seconds: float, bitrate: int) -> str:
    """Run the fan-out measurement and return it as a markdown section."""
    started = time.perf_counter()
    direct = direct_latency(seconds, bitrate)
    server = ServerProcess()
    sora = sora_sdk.Sora()
    results = {}
    try:
        for n in [0] + [c for c in counts if c > 0]:
            results[n] = fanout_run(sora, server, n, seconds, bitrate)
    finally:
        sora.close()
        server.close()
    base = results[0]["server_cpu"]
    lines = [
        "## SFU fan-out: one 640x480@30 VP8 %d kbps + Opus sender, N recvonly receivers" % bitrate, "",
        "%s %s, %d CPUs; server: `python -m sora_sdk.testing` subprocess; clients: this process. "
        "CPU %%: 100 = one core. Latency: glass-to-glass (push -> decoded BGR), median / p95, over the first %d "
        "receivers (the others receive without decoding)."
        % (platform.python_implementation(), platform.python_version(), os.cpu_count() or 0, DECODING), "",
        "| receivers | server CPU % | server CPU % per receiver (video+audio) | client CPU % "
        "| min receive fps (decoding receivers) | latency ms | added by the SFU hop (median) |",
        "|---|---|---|---|---|---|---|",
        "| direct (no server) | - | - | - | %.1f | %.1f / %.1f | - |" % (direct["fps"], direct["median"], direct["p95"]),
    ]
    for n, r in sorted(results.items()):
        per = "-" if n == 0 else "%.1f" % ((r["server_cpu"] - base) / n)
        latency = "-" if n == 0 else "%.1f / %.1f" % (r["median"], r["p95"])
        added = "-" if n == 0 else "%+.1f ms" % (r["median"] - direct["median"])
        fps = "-" if n == 0 else "%.1f" % r["fps_min"]
        lines.append("| %d | %.1f | %s | %.1f | %s | %s | %s |" % (n, r["server_cpu"], per, r["client_cpu"], fps,
                                                                  latency, added))
    lines += ["", "(N = 0: the sender alone; the server only receives. Total runtime %.0f s.)"
              % (time.perf_counter() - started), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", default="1,4,16", help="comma-separated receiver counts (default 1,4,16)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring window per run (default 6)")
    parser.add_argument("--bitrate", type=int, default=1000, help="VP8 bitrate in kbps (default 1000)")
    args = parser.parse_args(argv)
    print(report([int(n) for n in args.receivers.split(",") if n.strip()], args.seconds, args.bitrate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
