"""Our SDK against the raw codec floor (issue 6).

    python -m benchmarks.codec_floor [--seconds 5] [--codecs VP8,VP9,AV1,H264] [--sizes 640x480,1280x720]

For each codec and size (640x480 at 1 Mbit/s, 1280x720 at 2.5 Mbit/s, 30 fps) the same moving content
(sfu_fanout's gradients + moving box + frame counter, drawn at that size) goes through:

* the floor: a plain `gst-launch-1.0` subprocess with the encoder and decoder our shim uses, set with the
  same properties (csrc/src/peer.c), paced at 30 fps (`fakesink sync=true`: one streaming thread, so the
  sink's wait holds the source back), fed from raw frame files
  (`filesrc ! rawvideoparse`, files in /dev/shm). Two variants: "codec only" (I420 in, decoder's I420 out)
  and "with conversions" (BGR in -> videoconvert -> encoder -> decoder -> videoconvert -> BGR out, which is
  what the SDK does for `on_captured()` and a BGR `SoraVideoSink`). CPU: the subprocess's utime + stime
  from /proc/<pid>/stat over the measuring window (after a warm-up), so start-up is not counted.
* ours: a sendonly and a recvonly connection of this SDK (public API: `Sora`, `create_connection`,
  `on_captured`, `SoraVideoSink.on_frame` with BGR frames) through the local Sora server, which runs as a
  subprocess (`python -m sora_sdk.testing`) so that its CPU (SRTP decrypt/encrypt + forwarding) is not
  counted. CPU: this process over the window minus the harness (making the frames and reading the
  counter back, measured alone with no SDK), i.e. both SDK sides: copy-in, BGR->I420, encode, RTP, SRTP,
  ICE/UDP, jitter buffer, depayload, decode, I420->BGR, hand-off to the Python callback.

Latency is glass-to-glass: push time of a frame (before `on_captured()`) to the moment `on_frame` reads its
counter back from the decoded BGR picture. The floor has no network and no buffering; its CPU time per
frame (one streaming thread, one encoder thread) is its latency floor.

With `perf` available (and SORA_BENCH_PERF not 0), every configuration is also profiled, the
floor and ours, and the CPU is split by shared object, which shows where the extra CPU goes.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import sora_sdk  # noqa: E402
from benchmarks.common import Client, ServerProcess, cpu_seconds, process_cpu_seconds, stop_process  # noqa: E402
from benchmarks.sfu_fanout import LatencyMeter, Stamper, percentile, stamp  # noqa: E402

FPS = 30
SIZES = {(640, 480): 1000, (1280, 720): 2500}  # kbit/s
CODECS = ("VP8", "VP9", "AV1", "H264")
LOOP = 30  # distinct backgrounds (the picture repeats every second, as in sfu_fanout; the counter does not)
WARMUP = 1.5
CPU_TARGET = 1.15
LATENCY_TARGET_MS = 1000.0 * 1.5 / FPS


# ---------------------------------------------------------------------------- content
def backgrounds(width: int, height: int, count: int = LOOP) -> List[np.ndarray]:
    """sfu_fanout's moving content at any size: three moving gradients and a moving white box."""
    yy, xx = np.mgrid[0:height, 0:width]
    box = max(16, height // 5)
    top = (height - box) // 2
    frames = []
    for i in range(count):
        frame = np.empty((height, width, 3), np.uint8)
        frame[:, :, 0] = ((xx + i * 6) % 256).astype(np.uint8)
        frame[:, :, 1] = ((yy + i * 3) % 256).astype(np.uint8)
        frame[:, :, 2] = (((xx + yy) // 2 + i * 4) % 256).astype(np.uint8)
        x = (i * 16) % (width - box)
        frame[top:top + box, x:x + box] = 255
        frames.append(frame)
    return frames


# ---------------------------------------------------------------------------- the floor (gst-launch-1.0)
def libvpx_version() -> int:
    """The system libvpx's version as 0xMMmmpp (0 if not found): the shim picks the VP9 speed by it."""
    for name in ("libvpx.so.7", "libvpx.so.8", "libvpx.so.9", "libvpx.so.10", "libvpx.so.11"):
        try:
            return ctypes.CDLL(name).vpx_codec_version() & 0xFFFFFF
        except (OSError, AttributeError):
            continue
    return 0


def encoder_desc(codec: str, kbps: int) -> str:
    """The encoder as csrc/src/peer.c (impl_sora_peer_attach_video_source) sets it up, as gst-launch text."""
    if codec in ("VP8", "VP9"):
        vp8 = codec == "VP8"
        speed = -6 if vp8 else (7 if libvpx_version() >= 0x010d00 else 9)
        return ("%s deadline=1 cpu-used=%d threads=1 lag-in-frames=0 end-usage=cbr target-bitrate=%d "
                "keyframe-max-dist=3000 error-resilient=0 undershoot=95 buffer-size=1000 buffer-initial-size=500 "
                "buffer-optimal-size=600%s" % ("vp8enc" if vp8 else "vp9enc", speed, kbps * 1000,
                                                "" if vp8 else " tile-columns=0 row-mt=true frame-parallel-decoding=false"))
    if codec == "H264":
        return ("x264enc tune=zerolatency speed-preset=ultrafast bitrate=%d key-int-max=3000 threads=1 ! "
                "video/x-h264,profile=constrained-baseline,stream-format=byte-stream" % kbps)
    if codec == "AV1":
        # The shim now encodes AV1 with its own soraav1enc (libaom set up as libwebrtc does) and decodes with
        # soradav1dec (dav1d); both are registered inside the shim, where gst-launch-1.0 cannot see them. The AV1
        # floor therefore stays GStreamer's own av1enc / av1dec: what the engine offered before, not our codec.
        return ("video/x-raw,format=I420 ! av1enc usage-profile=realtime end-usage=cbr cpu-used=8 threads=1 "
                "row-mt=false lag-in-frames=0 target-bitrate=%d min-quantizer=10 max-quantizer=56 "
                "keyframe-max-dist=3000 buf-sz=1000 buf-initial-sz=500 buf-optimal-sz=600" % kbps)
    raise ValueError(codec)


# What decodebin picks in the SDK's receive branch (highest rank with these caps on Debian 12).
DECODERS = {"VP8": "vp8dec", "VP9": "vp9dec", "AV1": "av1dec", "H264": "h264parse ! avdec_h264"}


class FrameFiles:
    """The stamped frames, enough for a whole run, as one raw BGR and one raw I420 file in /dev/shm.

    One file parsed by `rawvideoparse` (not `multifilesrc`, whose buffers carry no timestamps, which the
    encoders' rate control then misreads) gives every frame its 30 fps timestamp and duration."""

    def __init__(self, width: int, height: int, frames: int) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix="sora-codec-floor-", dir=base)
        self.width, self.height = width, height
        loop = backgrounds(width, height)
        frame = np.empty((height, width, 3), np.uint8)
        with open(os.path.join(self.dir, "frames.bgr"), "wb") as f:
            for counter in range(1, frames + 1):  # the content and counters the Stamper sends
                np.copyto(frame, loop[counter % LOOP])
                stamp(frame, counter)
                f.write(frame.tobytes())
        # I420 made by GStreamer's own converter from the same BGR frames.
        run_gst("%s ! videoconvert ! video/x-raw,format=I420 ! filesink location=%s"
                % (self.source("BGR"), os.path.join(self.dir, "frames.i420")), timeout=120)

    def source(self, fmt: str) -> str:
        return ("filesrc location=%s ! rawvideoparse format=%s width=%d height=%d framerate=%d/1"
                % (os.path.join(self.dir, "frames." + fmt.lower()), fmt.lower(), self.width, self.height, FPS))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def run_gst(desc: str, timeout: float) -> None:
    proc = subprocess.run(["gst-launch-1.0", "-q"] + desc.split(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("gst-launch-1.0 failed: %s\n%s" % (desc, proc.stderr.decode(errors="replace")[-2000:]))


def floor_pipeline(files: FrameFiles, codec: str, kbps: int, conversions: bool) -> str:
    if conversions:
        return ("%s ! videoconvert ! %s ! %s ! videoconvert ! video/x-raw,format=BGR ! fakesink sync=true"
                % (files.source("BGR"), encoder_desc(codec, kbps), DECODERS[codec]))
    return ("%s ! %s ! %s ! fakesink sync=true"
            % (files.source("I420"), encoder_desc(codec, kbps), DECODERS[codec]))


def read_position(pid: int, directory: str) -> Optional[int]:
    """How far the pipeline has read its frames file (the file offset of filesrc's descriptor)."""
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith(directory):
                with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                    for line in f:
                        if line.startswith("pos:"):
                            return int(line.split()[1])
    except OSError:
        pass
    return None


def floor_run(files: FrameFiles, codec: str, kbps: int, conversions: bool, seconds: float,
              perf_out: Optional[str] = None) -> Dict[str, float]:
    """CPU % (100 = one core) of the paced gst-launch pipeline over `seconds` after a warm-up."""
    desc = floor_pipeline(files, codec, kbps, conversions)
    proc = subprocess.Popen(["gst-launch-1.0", "-q"] + desc.split(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(WARMUP)
        if proc.poll() is not None:
            raise RuntimeError("gst-launch-1.0 exited: %s\n%s" % (desc, proc.stderr.read().decode(errors="replace")))
        perf = start_perf(proc.pid, seconds, perf_out) if perf_out else None
        pos0, cpu0, t0 = read_position(proc.pid, files.dir), process_cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(seconds)
        pos1, cpu1, t1 = read_position(proc.pid, files.dir), process_cpu_seconds(proc.pid), time.perf_counter()
        if perf is not None:
            perf.wait(30)
    finally:
        stop_process(proc, 10)
    cpu, elapsed = cpu1 - cpu0, t1 - t0
    frame_bytes = files.width * files.height * (3 if conversions else 1.5)
    fps = (pos1 - pos0) / frame_bytes / elapsed if pos0 is not None and pos1 is not None else float("nan")
    frames = elapsed * (fps if fps == fps and fps > 0 else FPS)
    return {"cpu": 100.0 * cpu / elapsed, "ms_per_frame": 1000.0 * cpu / frames, "fps": fps}


def floor_kbps(files: FrameFiles, codec: str, kbps: int, frames: int = 150) -> float:
    """Bitrate the same encoder reaches on the same content (unpaced; rate control follows the timestamps)."""
    out = os.path.join(files.dir, "encoded")
    run_gst("%s ! identity eos-after=%d ! videoconvert ! %s ! filesink location=%s"
            % (files.source("BGR"), frames, encoder_desc(codec, kbps), out), timeout=120)
    size = os.path.getsize(out)
    os.unlink(out)
    return size * 8 / (frames / FPS) / 1000


# ---------------------------------------------------------------------------- ours
def harness_run(width: int, height: int, seconds: float) -> float:
    """CPU % of the harness alone: making and stamping frames, reading the counter back (no SDK)."""
    meter = LatencyMeter()
    meter.stamper = pusher = Stamper(meter.on_bgr, content=backgrounds(width, height))
    time.sleep(0.5)
    meter.start()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    cpu1, t1 = cpu_seconds(), time.perf_counter()
    meter.stop()
    pusher.stop()
    return 100.0 * (cpu1 - cpu0) / (t1 - t0)


def _video_out(stats: list) -> dict:
    for s in stats:
        if s.get("type") == "outbound-rtp" and s.get("kind") == "video":
            return s
    return {}


def ours_run(server: ServerProcess, codec: str, width: int, height: int, kbps: int, seconds: float,
             perf_out: Optional[str] = None) -> Dict[str, float]:
    channel = "floor-%s-%dx%d-%d" % (codec, width, height, int(time.time() * 1000) % 100000)
    meter = LatencyMeter()
    sinks = []
    with sora_sdk.Sora() as sora:
        video = sora.create_video_source()
        sender = Client(sora, server.signaling_url, channel_id=channel, role="sendonly", video_source=video,
                        audio=False, video_codec_type=codec, video_bit_rate=kbps)
        sender.start()
        receiver = Client(sora, server.signaling_url, channel_id=channel, role="recvonly", audio=False,
                          video_codec_type=codec)

        def on_track(track) -> None:
            if track.kind != "video":
                return
            sink = sora_sdk.SoraVideoSink(track)
            sink.on_frame = lambda frame: meter.on_bgr(frame.data())
            sinks.append(sink)

        receiver.conn.on_track = on_track
        receiver.start()
        meter.stamper = pusher = Stamper(video.on_captured, content=backgrounds(width, height))
        time.sleep(WARMUP + 1.0)  # key frame, jitter buffer, rate controller settle
        meter.start()
        out0 = _video_out(json.loads(sender.conn.get_stats()))
        perf = start_perf(os.getpid(), seconds, perf_out) if perf_out else None
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(), time.perf_counter()
        out1 = _video_out(json.loads(sender.conn.get_stats()))  # now: the window's bytes, not perf's write-out's
        meter.stop()
        if perf is not None:
            perf.wait(30)
        pusher.stop()
        dropped = sum(s.dropped for s in sinks)
        receiver.conn.disconnect()
        sender.conn.disconnect()
        for sink in sinks:
            sink.close()
    elapsed = t1 - t0
    sent_bytes = out1.get("bytesSent", 0) - out0.get("bytesSent", 0)
    return {"cpu": 100.0 * (cpu1 - cpu0) / elapsed, "fps": meter.frames / elapsed,
            "p50": statistics.median(meter.samples) if meter.samples else float("nan"),
            "p95": percentile(meter.samples, 0.95), "kbps": sent_bytes * 8 / elapsed / 1000,
            "encoded": "%sx%s" % (out1.get("frameWidth", "?"), out1.get("frameHeight", "?")),
            "dropped": dropped}


# ---------------------------------------------------------------------------- perf (where the CPU goes)
def perf_available() -> bool:
    if os.environ.get("SORA_BENCH_PERF", "1") == "0" or not shutil.which("perf"):
        return False
    try:
        proc = subprocess.run(["perf", "record", "-q", "-o", "/dev/null", "--", "true"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def start_perf(pid: int, seconds: float, out: str) -> subprocess.Popen:
    return subprocess.Popen(["perf", "record", "-q", "-F", "499", "-p", str(pid), "-o", out, "--", "sleep",
                             "%.1f" % seconds], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Shared objects grouped into what they do.
GROUPS = [
    ("encoder + decoder (libvpx, libaom, x264, libav)", r"libvpx|libaom|libx264|libavcodec|libdav1d|libopenh264"),
    ("pixel conversion (libyuv in ours; videoconvert: libgstvideo, orc)",
     r"libyuv|libgstvideo|liborc|libgstvideoconvert"),
    ("RTP, jitter buffer, payloaders, RTCP (gst rtp/rtpmanager/vpx/webrtc)",
     r"libgstrtp|libgstrtpmanager|libgstwebrtc|libgstvpx|libgstaom|libgstx264|libgstlibav|libgstsctp|"
     r"libgstsrtp|libgstnice"),
    ("SRTP + DTLS crypto (libsrtp2, libcrypto)", r"libsrtp|libcrypto|libssl"),
    ("ICE / UDP (libnice, libgio)", r"libnice|libgio"),
    ("GStreamer core + GLib (buffers, pads, queues, threads)", r"libgstreamer|libgstbase|libgstapp|libglib|libgobject"),
    ("Python (interpreter, numpy, cffi; SDK + harness)", r"python|pypy|libpypy|_multiarray|numpy|_cffi|_sora_cffi"),
    ("our shim (libsora_c)", r"libsora_c"),
    ("libc (memcpy, malloc, locks)", r"libc\.so|libc-|ld-linux|libm\.so|libpthread"),
    ("kernel (syscalls, UDP loopback, scheduling)", r"kernel|\[k\]|vmlinux"),
]


def perf_groups(path: str) -> Dict[str, float]:
    """Fractions of the samples per group (by shared object of the sampled instruction)."""
    proc = subprocess.run(["perf", "report", "-i", path, "--sort", "dso", "--stdio", "-q"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, timeout=120)
    shares: Dict[str, float] = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S.*)$", line)
        if not m:
            continue
        share, dso = float(m.group(1)) / 100.0, m.group(2).strip()
        group = next((name for name, pattern in GROUPS if re.search(pattern, dso)), "other")
        shares[group] = shares.get(group, 0.0) + share
    return shares


# ---------------------------------------------------------------------------- report
def libyuv_conversion_cpu(width: int, height: int, frames: int = 120) -> float:
    """CPU % of one core at 30 fps for the SDK's two conversions of a frame, alone: libyuv's RGB24ToI420 (what
    `on_captured()` does) and I420ToRGB24 (what a BGR sink does), called through ctypes on this thread."""
    try:
        yuv = ctypes.CDLL("libyuv.so.0")
    except OSError:
        return float("nan")
    cw, ch = (width + 1) // 2, (height + 1) // 2
    bgr = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    planes = [np.empty(n, np.uint8) for n in (width * height, cw * ch, cw * ch)]
    ptr = [ctypes.c_void_p(a.ctypes.data) for a in [bgr] + planes]
    y, u, v = ptr[1:]
    begin = time.thread_time()
    for _ in range(frames):
        yuv.RGB24ToI420(ptr[0], width * 3, y, width, u, cw, v, cw, width, height)
        yuv.I420ToRGB24(y, width, u, cw, v, cw, ptr[0], width * 3, width, height)
    return 100.0 * (time.thread_time() - begin) / frames * FPS


def fmt(v: float, digits: int = 1) -> str:
    return "-" if v != v else ("%.*f" % (digits, v))


def times(v: float) -> str:
    return "-" if v != v else "%.2fx" % v


def report(seconds: float = 5.0, codecs=CODECS, sizes=None) -> str:
    started = time.perf_counter()
    sizes = list(sizes or SIZES)
    if not shutil.which("gst-launch-1.0"):
        return "## Against the raw codec floor\n\ngst-launch-1.0 is not installed (Debian: gstreamer1.0-tools).\n"
    profile = perf_available()
    perf_dir = tempfile.mkdtemp(prefix="sora-floor-perf-")
    harness = {s: harness_run(s[0], s[1], min(seconds, 3.0)) for s in sizes}
    conversion = {s: libyuv_conversion_cpu(*s) for s in sizes}
    rows = []
    breakdown: list = []
    server = ServerProcess()
    try:
        for (w, h) in sizes:
            kbps = SIZES.get((w, h), 1000)
            files = FrameFiles(w, h, int((WARMUP + seconds + 1.0) * FPS))
            try:
                for codec in codecs:
                    floor_data = os.path.join(perf_dir, "floor.data") if profile else None
                    ours_data = os.path.join(perf_dir, "ours.data") if profile else None
                    floor_only = floor_run(files, codec, kbps, False, seconds)
                    floor_conv = floor_run(files, codec, kbps, True, seconds, floor_data)
                    enc_kbps = floor_kbps(files, codec, kbps)
                    ours = ours_run(server, codec, w, h, kbps, seconds, ours_data)
                    ours["sdk_cpu"] = max(0.0, ours["cpu"] - harness[(w, h)])
                    floor_only["cpu_yuv"] = floor_only["cpu"] + conversion[(w, h)]
                    rows.append((codec, w, h, kbps, floor_only, floor_conv, enc_kbps, ours))
                    if profile:
                        breakdown.append((codec, w, h, floor_conv["cpu"], perf_groups(floor_data), ours["cpu"],
                                          perf_groups(ours_data), harness[(w, h)]))
            finally:
                files.close()
    finally:
        server.close()
        shutil.rmtree(perf_dir, ignore_errors=True)
    return render(rows, harness, conversion, breakdown, seconds, time.perf_counter() - started)


def render(rows, harness, conversion, breakdown, seconds: float, runtime: float) -> str:
    lines = [
        "## Against the raw codec floor", "",
        "%s %s, %d CPUs. Same moving content (gradients, a moving box, the frame counter), 30 fps, same encoder "
        "and decoder with the properties our shim sets. **Floor**: a `gst-launch-1.0` subprocess, paced at 30 fps "
        "(`filesrc` from /dev/shm ! `rawvideoparse` ! [videoconvert] ! encoder ! decoder ! [videoconvert to BGR] ! "
        "`fakesink sync=true`); *codec only* = I420 in and out; *+libyuv* = codec only plus the CPU of the two "
        "conversions the SDK makes per frame (libyuv RGB24ToI420 in `on_captured()`, I420ToRGB24 in a BGR sink: "
        "%s, measured alone); *+videoconvert* = the same pipeline with BGR in and BGR out through GStreamer's "
        "videoconvert (for reference: the SDK used it before libyuv). The target is judged against *+libyuv*. "
        "**Ours**: a sendonly and a recvonly connection of this SDK through the local Sora server "
        "(a subprocess, not counted), `on_captured()` BGR in, `SoraVideoSink.on_frame` BGR out, both SDK sides "
        "in this process; its CPU is the process's minus the harness alone (making and stamping the frames, "
        "reading the counter back: %s). CPU %%: 100 = one core, over %.0f s after a warm-up. Latency: "
        "glass-to-glass (before `on_captured()` -> decoded BGR frame in `on_frame`), p50 / p95. The floor's "
        "latency is its CPU time per frame (encode + decode, no network, no buffering)."
        % (platform.python_implementation(), platform.python_version(), os.cpu_count() or 0,
           ", ".join("%dx%d %.1f %%" % (s[0], s[1], v) for s, v in conversion.items()),
           ", ".join("%dx%d %.1f %%" % (s[0], s[1], v) for s, v in harness.items()), seconds), "",
        "| codec | size | kbit/s target / floor / ours | floor CPU % codec only | floor CPU % +libyuv "
        "| floor CPU % +videoconvert | ours CPU % (SDK, both sides) | ours / floor +libyuv | ours / floor codec only "
        "| fps floor / ours | ours latency ms p50 / p95 | floor ms per frame |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    stalled = []
    for codec, w, h, kbps, floor_only, floor_conv, enc_kbps, ours in rows:
        ratio = ours["sdk_cpu"] / floor_only["cpu_yuv"] if floor_only["cpu_yuv"] > 0 else float("nan")
        ratio_only = ours["sdk_cpu"] / floor_only["cpu"] if floor_only["cpu"] > 0 else float("nan")
        if ours["fps"] < FPS / 2:
            # Not real time: the CPU ratio compares two saturated runs, not the same work.
            stalled.append("%s %dx%d (ours delivered %.1f fps, the floor %.1f fps)"
                           % (codec, w, h, ours["fps"], floor_conv["fps"]))
            ratio = ratio_only = float("nan")
        size = "%dx%d" % (w, h)
        if ours["encoded"] not in ("?x?", size):
            size += " (sent %s)" % ours["encoded"]
        lines.append("| %s | %s | %d / %.0f / %.0f | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s |" % (
            codec, size, kbps, enc_kbps, ours["kbps"], fmt(floor_only["cpu"]), fmt(floor_only["cpu_yuv"]),
            fmt(floor_conv["cpu"]),
            fmt(ours["sdk_cpu"]), times(ratio), times(ratio_only), fmt(floor_conv["fps"]), fmt(ours["fps"]),
            fmt(ours["p50"]),
            fmt(ours["p95"]), fmt(floor_conv["ms_per_frame"])))
        if ratio == ratio:
            verdicts.append((codec, w, h, ratio, ours))
    lines += [""]
    cpu_ok = [v for v in verdicts if v[3] <= CPU_TARGET]
    cpu_missed = [v for v in verdicts if not v[3] <= CPU_TARGET]
    lines.append("**Targets.** CPU <= %.2fx the raw encode + decode plus the same (libyuv) conversions: "
                 "met by %d of %d "
                 "(%s)%s." % (CPU_TARGET, len(cpu_ok), len(verdicts),
                              ", ".join("%s %dx%d %.2fx" % (c, w, h, r) for c, w, h, r, _ in cpu_ok) or "none",
                              "; **missed** by %s" % ", ".join("%s %dx%d %.2fx" % (c, w, h, r)
                                                              for c, w, h, r, _ in cpu_missed)
                              if cpu_missed else ""))
    if stalled:
        lines.append("Not comparable (below %d fps: this machine cannot run that encoder and decoder in real time, "
                     "so both sides are CPU-bound): %s." % (FPS // 2, "; ".join(stalled)))
    vp8 = next((v for v in verdicts if v[0] == "VP8" and (v[1], v[2]) == (640, 480)), None)
    if vp8 is not None:
        p50 = vp8[4]["p50"]
        lines.append("p50 glass-to-glass latency at 640x480@30 VP8 <= %.0f ms (1.5 frame intervals): %.1f ms, %s."
                     % (LATENCY_TARGET_MS, p50, "met" if p50 <= LATENCY_TARGET_MS else "**missed**"))
    lines.append("")
    if breakdown:
        short = ["codec", "conversion", "RTP/RTCP/jitter buffer", "SRTP+DTLS", "ICE/UDP", "GStreamer core+GLib",
                 "Python", "our shim", "libc", "kernel", "other"]
        groups = [name for name, _ in GROUPS] + ["other"]
        lines += ["Where the extra CPU goes: `perf record -F 499` on each process during its window, samples split "
                  "by the shared object they hit, CPU %% = share x the process's CPU %%; each cell is ours minus the "
                  "floor +videoconvert, in %% of one core. Ours still holds the harness (%s) under Python/libc."
                  % ", ".join("%dx%d %.1f %%" % (s[0], s[1], v) for s, v in harness.items()), "",
                  "| codec | size | " + " | ".join(short) + " | total |", "|---|---|" + "---|" * (len(short) + 1)]
        for codec, w, h, floor_cpu, floor_shares, ours_cpu, ours_shares, _ in breakdown:
            cells = ["%+.1f" % (ours_shares.get(g, 0.0) * ours_cpu - floor_shares.get(g, 0.0) * floor_cpu)
                     for g in groups]
            lines.append("| %s | %dx%d | %s | %+.1f |" % (codec, w, h, " | ".join(cells), ours_cpu - floor_cpu))
        lines.append("")
        lines.append("Groups: " + "; ".join("%s = %s" % (a, b) for a, (b, _) in zip(short, GROUPS)) + ".")
        lines.append("")
    lines += ["(Total runtime %.0f s.)" % runtime, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring window per run (default 5)")
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--sizes", default="640x480,1280x720")
    args = parser.parse_args(argv)
    sizes: List[Tuple[int, int]] = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]  # type: ignore
    print(report(args.seconds, [c.strip().upper() for c in args.codecs.split(",") if c.strip()], sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
