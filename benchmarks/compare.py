"""`make bench-compare`: our SDK side by side with the OFFICIAL Sora Python SDK, same server, same work.

    python -m benchmarks.compare [--runs 3] [--seconds 8] [--warmup 4] [--max-warmup 40] [--codecs VP8,VP9,AV1]
                                 [--sizes 640x480,1280x720] [--no-write]

What runs where
---------------
* The local Sora server (``python -m sora_sdk.testing``, our `.venv`) is a
  subprocess in the root network namespace. Its CPU is nobody's score.
* Every measurement is one process of benchmarks/compare_worker.py, run by
  `.venv` (ours, CPython), `.venv-pypy` (ours, PyPy: the Python-overhead and
  VP8 receive rows only) or `.venv-official` (the official wheel, 2025.4.0,
  made by tests/official_peer.py the same way the interop tests make it). The
  very same file runs in all three; it uses only the public official API. Jobs
  run one at a time, so no two measured clients share the CPU.
* Network: libwebrtc (the official SDK) gathers no ICE candidates on loopback,
  so the official worker must run inside a network namespace with a veth pair
  (tests/official_peer.py's `NetNS`: 10.99.<n>.1 in the root namespace, where
  the server listens and gathers, <-> 10.99.<n>.2 inside). For fairness OUR
  workers run inside the same namespace too, over the same veth path, with
  ``SORA_SDK_ICE_ADDRESS=10.99.<n>.2`` (our SDK gathers on 127.0.0.1 by
  default, which cannot reach the server from inside the namespace). So both
  SDKs' media and signaling cross exactly the same links. The namespace is
  removed at exit, also on failure and on SIGTERM/SIGINT.

What is measured (medians over ``--runs`` runs, default 3, or SORA_COMPARE_RUNS)
-------------------------------------------------------------------------------
* Sending: sendonly, video only, ``--bitrate`` kbps (1000), 30 fps pushed from
  Python (a scrolling gradient and a moving box, the same frames for both), for
  VP8 / VP9 / AV1 at 640x480 and 1280x720, with
  ``degradation_preference=MAINTAIN_RESOLUTION`` (``--degradation``): left to
  itself, libwebrtc starts a 1280x720 stream at 480x256 or 320x176 while its
  bandwidth estimate ramps up, and a CPU figure for a quarter of the pixels
  compares nothing. The encoded size and fps are in the table either way.
  Like for like: each sender streams until it is at its target bitrate
  (libwebrtc starts at 300 kbit/s and ramps up for 10-20 s): at least
  ``--warmup`` s, until outbound-rtp targetBitrate >= 90 % of the configured
  rate and the rate sent over the last 2 s is within 10 % of the 2 s before,
  at most ``--max-warmup`` s. Then CPU of the worker process (getrusage over
  an 8 s window), RSS (median of VmRSS samples in the window = steady; VmHWM
  = peak), encoded fps (outbound-rtp framesEncoded delta from get_stats),
  kbit/s of both SDKs, CPU ms per encoded megabit, encoded size. A run whose
  two bitrates differ by more than 10 % is flagged and listed.
* Receiving: one fixed sender (ours, CPython, in the same namespace) per
  stream; the receiving worker (ours or official) joins recvonly, attaches a
  SoraVideoSink and reads a 24-bit frame counter stamped into the pixels in
  ``on_frame`` (as benchmarks/sfu_fanout.py does). The sender reports each
  frame's push time and the receiver each frame's arrival in ``on_frame``, both
  as time.monotonic() (CLOCK_MONOTONIC: one clock for all namespaces), which
  gives glass-to-glass latency (push -> encode -> server -> decode -> BGR ->
  Python). Also the receiver's CPU, RSS and delivered fps. The receivers
  take turns on one sender (ours on CPython; ``--sender official`` for the
  official one). A receiver that stalls (under 15 fps delivered, or no frame:
  seen at 1280x720 on a saturated 2-core machine, with packets lost on the way
  and the receiver waiting for a key frame) is counted and left out of the
  medians, and the report lists each such run with its inbound-rtp stats; the
  driver's log also shows the UDP receive-buffer drops of both namespaces.
* connect() to the client's own ``connection.created`` notify (median of 5 per
  run after the process's first connect, which is reported apart). One
  unmeasured connect warms the server up first (its first offer takes ~0.5 s).
* Data channel ``#bench`` messages between two connections of one worker
  through the server: round trip (B echoes in on_message; 200 sequential 100 B
  messages, p50), and one-way throughput A -> B with at most 64 messages in
  flight (3000 x 100 B and 400 x 16 KiB).
* Python overhead: on_captured() wall µs per call with no connection (paced at
  200 calls/s) and the process CPU per call (including the conversion both
  SDKs do on a thread of the video source, minus making the frame); on_frame
  dispatch: the CPU
  that the thread calling on_frame spends per frame OUTSIDE the callback (thread
  CPU time between leaving one callback and entering the next). What that
  thread does differs: ours dequeues a frame that the engine already decoded and
  converted to BGR and wraps it (cffi buffer + SoraVideoFrame); the official
  SDK's per-sink "OnFrameQueue" thread converts I420 to BGR (libyuv) when it
  builds the SoraVideoFrame and wraps it (nanobind). ``frame.data()`` is timed
  apart.

The report (stdout, and benchmarks/RESULTS.md between the
``<!-- bench-compare:begin/end -->`` markers, which `make bench` keeps) gives
ratios ours / official next to the targets of issue 14: send CPU <= 1.0 for VP8
and VP9 and <= 1.2 for AV1 (receive the same), on_captured() wall time <= the
official's, the first connect <= 1.2x, data-channel throughput >= the
official's, latency <= 1.0. If the official venv or
the namespace cannot be made, this says why and exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from benchmarks.common import ServerProcess, cpu_model  # noqa: E402
from tests.official_peer import (OFFICIAL_VERSION, NetNS, NetNSUnavailable,  # noqa: E402
                                 OfficialUnavailable, official_python)

WORKER = os.path.join(HERE, "compare_worker.py")
RESULTS = os.path.join(HERE, "RESULTS.md")
BEGIN = "<!-- bench-compare:begin -->"
END = "<!-- bench-compare:end -->"
OURS_PY = os.path.join(ROOT, ".venv", "bin", "python")
PYPY_PY = os.path.join(ROOT, ".venv-pypy", "bin", "python")
TARGET_CODECS = ("VP8", "VP9")  # CPU ratio <= 1.0 (issue 14); AV1's target is 1.2
AV1_LIMIT = 1.2
BITRATE_APART = 0.10  # a send run whose two SDKs' bitrates differ by more than this is flagged
STALLED_FPS = 15.0  # a receive run that delivered fewer fps than this (of 30 pushed) stalled


def log(message: str) -> None:
    sys.stderr.write("[bench-compare %s] %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


class JobFailed(Exception):
    pass


# --------------------------------------------------------------------------- processes
class Worker:
    """One compare_worker.py process inside the namespace; JSON events from its stdout."""

    def __init__(self, python: str, ns: NetNS, job: dict) -> None:
        self.job = job
        env = dict(os.environ, SORA_SDK_ICE_ADDRESS=ns.peer_addr, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)  # the official worker must import the wheel, not this tree
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self.events = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(ns.exec_prefix() + [python, "-u", WORKER, json.dumps(job)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, cwd=tempfile.gettempdir(), start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            try:
                event = json.loads(raw.decode("utf-8", "replace"))
            except ValueError:
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "_eof"})
            self._cond.notify_all()

    def wait(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event["event"] == name:
                        return event
                    if event["event"] in ("error", "_eof"):
                        raise JobFailed(self.describe(event))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise JobFailed("no %r within %.0f s: %s" % (name, timeout, self.describe(None)))
                self._cond.wait(min(left, 0.5))

    def ready(self) -> dict:
        with self._cond:
            return next((e for e in self.events if e["event"] == "ready"), {})

    def describe(self, event) -> str:
        try:
            self._stderr.seek(0)
            tail = self._stderr.read().decode("utf-8", "replace")[-1500:]
        except (OSError, ValueError):
            tail = ""
        what = event.get("message", "exited without a result") if event else "timeout"
        return "%s %s (%s): %s%s" % (self.job["impl"], self.job["kind"], self.job.get("codec", ""),
                                     what, ("\nstderr: " + tail) if tail.strip() else "")

    def stop(self) -> None:
        try:
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def close(self, timeout: float = 30.0) -> None:
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._reader.join(5)


def udp_drops(ns=None) -> tuple:
    """UDP datagrams dropped because a socket's receive / send buffer was full (the root or the given namespace)."""
    try:
        if ns is None:
            with open("/proc/net/snmp") as f:
                text = f.read()
        else:
            text = subprocess.run(ns.exec_prefix() + ["cat", "/proc/net/snmp"], capture_output=True, text=True,
                                  timeout=10).stdout
        rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
        return (int(rows[1][rows[0].index("RcvbufErrors")]), int(rows[1][rows[0].index("SndbufErrors")]))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return (0, 0)


# --------------------------------------------------------------------------- the plan
class Bench:
    def __init__(self, args, ns: NetNS, server: ServerProcess, pythons: dict) -> None:
        self.args = args
        self.ns = ns
        self.url = server.signaling_url
        self.pythons = pythons  # runtime -> interpreter
        self.values = {}        # (section, row, runtime, metric) -> [per-run values]
        self.failures = []
        self.ready = {}         # runtime -> its ready event (versions)
        self.serial = 0
        self.fps_sources = {}   # runtime -> where its encoded fps came from
        self.stalls = []        # receive runs left out of the medians
        self.flags = []         # send runs whose two bitrates were more than BITRATE_APART apart

    def record(self, section: str, row: str, runtime: str, metric: str, value) -> None:
        if value is None:
            return
        self.values.setdefault((section, row, runtime, metric), []).append(value)

    def median(self, section: str, row: str, runtime: str, metric: str):
        values = self.values.get((section, row, runtime, metric))
        if not values:
            return None
        if isinstance(values[0], str):
            return max(set(values), key=values.count)
        return statistics.median(values)

    def job(self, runtime: str, kind: str, **fields) -> dict:
        self.serial += 1
        job = dict(fields, kind=kind, url=self.url, impl="official" if runtime == "official" else "ours",
                   max_seconds=fields.get("max_seconds", 150))
        job.setdefault("channel_id", "cmp-%d-%s" % (self.serial, kind))
        return job

    def run(self, runtime: str, job: dict, timeout: float = 120.0, stall_ok: bool = False):
        """Run a job to its end; its result, or None (the failure is recorded, unless `stall_ok`: the caller's)."""
        worker = Worker(self.pythons[runtime], self.ns, job)
        try:
            result = worker.wait("result", timeout)
            self.ready.setdefault(runtime, worker.ready())
            return result
        except JobFailed as exc:
            if stall_ok and "no video frame within" in str(exc):
                log("%s %s: %s" % (runtime, job["kind"], str(exc).splitlines()[0]))
            else:
                self.fail(runtime, job, str(exc))
            return None
        finally:
            worker.close()

    def fail(self, runtime: str, job: dict, message: str) -> None:
        line = "%s %s %s%s: %s" % (runtime, job["kind"], job.get("codec", ""),
                                  " %dx%d" % (job["width"], job["height"]) if "width" in job else "",
                                  message.strip().splitlines()[-1] if message.strip() else "failed")
        log("FAILED " + line)
        log(message)
        self.failures.append(line)

    # ---- sections
    def sending(self, r: int, codec: str, width: int, height: int, order) -> None:
        row = "%s %dx%d" % (codec, width, height)
        kbps = {}
        for runtime in order:
            result = self.run(runtime, self.job(runtime, "send", codec=codec, width=width, height=height, fps=30,
                                                bitrate=self.args.bitrate, warmup=self.args.warmup,
                                                max_warmup=self.args.max_warmup, seconds=self.args.seconds,
                                                degradation=self.args.degradation))
            if result is None:
                continue
            if result.get("kbps"):
                # CPU per encoded megabit: ms of CPU for each Mbit sent (so a sender that sends less is not
                # counted cheaper for it)
                result["cpu_ms_per_mbit"] = result["cpu_pct"] * 10.0 / (result["kbps"] / 1000.0)
            for metric in ("cpu_pct", "rss_steady_mb", "rss_peak_mb", "fps_encoded", "kbps", "frame_size",
                           "limitation", "cpu_ms_per_mbit", "warmup_s"):
                self.record("send", row, runtime, metric, result.get(metric))
            self.record("send", row, runtime, "warmup_missed", 0 if result.get("warmup_reached") else 1)
            self.fps_sources.setdefault(runtime, set()).add(result.get("fps_from"))
            kbps[runtime] = result["kbps"]
            log("send %s %s: CPU %.1f%%, %s fps (%s), %.0f kbit/s (target %s), %s, warm-up %.1f s%s" % (
                row, runtime, result["cpu_pct"], fmt(result.get("fps_encoded")), result.get("fps_from"),
                result["kbps"], result.get("target_bitrate"), result["frame_size"], result.get("warmup_s", 0),
                "" if result.get("warmup_reached") else " (target bitrate not reached)"))
        if "ours" in kbps and "official" in kbps:
            apart = abs(kbps["ours"] - kbps["official"]) / max(kbps["ours"], kbps["official"])
            self.record("send", row, "both", "apart", 1 if apart > BITRATE_APART else 0)
            if apart > BITRATE_APART:
                self.flags.append("%s, run %d: ours sent %.0f kbit/s, the official %.0f (%.0f %% apart)" % (
                    row, r + 1, kbps["ours"], kbps["official"], apart * 100))

    def receiving(self, r: int, codec: str, width: int, height: int, order) -> None:
        row = "%s %dx%d" % (codec, width, height)
        who = self.args.sender
        sender_job = self.job(who, "send", codec=codec, width=width, height=height, fps=30,
                              bitrate=self.args.bitrate, warmup=0.3, max_warmup=1.0, seconds=0.3, hold=True,
                              max_seconds=200,
                              degradation=self.args.degradation)
        sender = Worker(self.pythons[who], self.ns, sender_job)
        try:
            try:
                sender.wait("send_result", 60)
            except JobFailed as exc:
                self.fail(who, sender_job, "fixed sender: %s" % exc)
                return
            receivers = list(order) + (["pypy"] if "pypy" in self.pythons and codec == "VP8" else [])
            results = {}
            drops = {}
            for runtime in receivers:
                job = self.job(runtime, "recv", codec=codec, channel_id=sender_job["channel_id"],
                               warmup=self.args.warmup, seconds=self.args.seconds)
                before = udp_drops() + udp_drops(self.ns)
                results[runtime] = self.run(runtime, job, stall_ok=True)
                after = udp_drops() + udp_drops(self.ns)
                drops[runtime] = tuple(a - b for a, b in zip(after, before))
            sender.stop()
            try:
                sent = {int(c): t for c, t in sender.wait("result", 30)["sent"]}
            except JobFailed as exc:
                self.fail(who, sender_job, "fixed sender: %s" % exc)
                return
        finally:
            sender.close()
        for runtime, result in results.items():
            stalled = result is None or result["fps"] < STALLED_FPS
            self.record("recv", row, runtime, "stalled", 1 if stalled else 0)
            if result is None:
                self.stalls.append("%s receiving %s in run %d: no frame at all" % (runtime, row, r + 1))
                continue
            latencies = []
            for counter, at in result["samples"]:
                pushed = sent.get(counter)
                if pushed is not None and 0 <= at - pushed < 5:
                    latencies.append((at - pushed) * 1000)
            latencies.sort()
            p50 = statistics.median(latencies) if latencies else None
            p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))] if latencies else None
            log("recv %s %s: CPU %.1f%%, %.1f fps, latency p50 %s ms, dispatch %s µs; %d frames in all; "
                "UDP drops (receive/send buffer full) root %d/%d, namespace %d/%d; %s%s" % (
                    (row, runtime, result["cpu_pct"], result["fps"], fmt(p50),
                     fmt(result.get("dispatch_us"), 0), result.get("frames_total", 0)) + drops[runtime]
                    + (json.dumps(result.get("inbound")), " STALLED" if stalled else "")))
            if stalled:
                # a stream that stalled: its CPU, fps and latency would compare nothing
                self.stalls.append("%s receiving %s in run %d: %.1f fps, %d frames in all; inbound-rtp %s" % (
                    runtime, row, r + 1, result["fps"], result.get("frames_total", 0),
                    json.dumps(result.get("inbound"))))
                continue
            for metric, value in (("cpu_pct", result["cpu_pct"]), ("fps", result["fps"]),
                                  ("rss_steady_mb", result["rss_steady_mb"]), ("rss_peak_mb", result["rss_peak_mb"]),
                                  ("lat_p50", p50), ("lat_p95", p95), ("dispatch_us", result.get("dispatch_us")),
                                  ("data_us", result.get("data_us")),
                                  ("matched", len(latencies) / max(1, len(result["samples"])))):
                self.record("recv", row, runtime, metric, value)

    def connecting(self, order) -> None:
        for runtime in order:
            result = self.run(runtime, self.job(runtime, "connect", count=5))
            if result is not None:
                self.record("connect", "connect", runtime, "connect_ms", result["connect_ms"])
                self.record("connect", "connect", runtime, "connect_first_ms", result["connect_first_ms"])
                log("connect %s: %.1f ms (first %.1f ms)" % (runtime, result["connect_ms"],
                                                            result["connect_first_ms"]))

    def data_channel(self, order) -> None:
        for runtime in order:
            result = self.run(runtime, self.job(runtime, "datachannel"))
            if result is None:
                continue
            self.record("dc", "dc", runtime, "rtt_p50_ms", result["rtt_p50_ms"])
            for name in ("small", "large"):
                part = result[name]
                self.record("dc", "dc", runtime, name + "_msgs_per_s", part["msgs_per_s"])
                self.record("dc", "dc", runtime, name + "_mb_per_s", part["mb_per_s"])
                if part["delivered"] < part["sent"]:
                    self.failures.append("%s data channel %s: %d of %d delivered" % (
                        runtime, name, part["delivered"], part["sent"]))
            log("datachannel %s: rtt %.2f ms, %.0f msg/s, %.1f MB/s" % (
                runtime, result["rtt_p50_ms"], result["small"]["msgs_per_s"], result["large"]["mb_per_s"]))

    def overhead(self, order) -> None:
        for runtime in list(order) + (["pypy"] if "pypy" in self.pythons else []):
            result = self.run(runtime, self.job(runtime, "overhead"))
            if result is None:
                continue
            for size, part in result["on_captured"].items():
                self.record("overhead", size, runtime, "call_us", part["call_us"])
                self.record("overhead", size, runtime, "cpu_per_frame_us", part["cpu_per_frame_us"])

    def run_all(self) -> None:
        streams = [(codec, w, h) for codec in self.args.codecs for (w, h) in self.args.sizes]
        # The server's first connection loads its own engine (about 0.5 s before its first offer): not a client's.
        self.run("ours", self.job("ours", "connect", count=1))
        for r in range(self.args.runs):
            order = ("ours", "official") if r % 2 == 0 else ("official", "ours")
            log("run %d of %d (order: %s)" % (r + 1, self.args.runs, " then ".join(order)))
            parts = self.args.parts
            if "connect" in parts:
                self.connecting(order)
            if "datachannel" in parts:
                self.data_channel(order)
            if "overhead" in parts:
                self.overhead(order)
            for codec, w, h in streams:
                if "send" in parts:
                    self.sending(r, codec, w, h, order)
                if "recv" in parts:
                    self.receiving(r, codec, w, h, order)


# --------------------------------------------------------------------------- the report
def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return "%.*f" % (digits, value)


def ratio(ours, official):
    if ours is None or official is None or official == 0:
        return None
    return ours / official


def verdict(value, limit: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "no data"
    ok = value >= limit if higher_is_better else value <= limit
    return "met" if ok else "**MISSED**"


def machine() -> str:
    return "%s, %d cores, Linux %s" % (cpu_model(), os.cpu_count() or 0, platform.release())


def report(bench: Bench, args, elapsed: float) -> str:
    m = bench.median
    ours_ready = bench.ready.get("ours", {})
    off_ready = bench.ready.get("official", {})
    pypy_ready = bench.ready.get("pypy", {})
    missed = []

    def cpu_cells(part: str, row: str, codec: str, what: str):
        """Ours and the official CPU % of a send or receive row, their ratio and its verdict (misses recorded)."""
        ours, off = m(part, row, "ours", "cpu_pct"), m(part, row, "official", "cpu_pct")
        rr = ratio(ours, off)
        limit = 1.0 if codec in TARGET_CODECS else AV1_LIMIT if codec == "AV1" else None
        target = "%s (≤ %.1f)" % (verdict(rr, limit), limit) if limit else "(none)"
        if target.startswith("**MISSED**"):
            missed.append("%s CPU %s: ratio %.2f (target ≤ %.1f)" % (what, row, rr, limit))
        return ours, off, rr, target

    lines = [
        "## Side by side with the official SDK", "",
        "Measured by `make bench-compare` (benchmarks/compare.py; one job = one benchmarks/compare_worker.py "
        "process, the same file for both SDKs), medians of %d runs, %.0f s windows; total %.0f s. Each sender "
        "streams until it is at its target bitrate before its window (at least %.0f s, at most %.0f s: "
        "targetBitrate ≥ 90 %% of the configured bitrate and the sent rate steady within 10 %% over 2 s); "
        "receivers measure after %.0f s of frames." % (args.runs, args.seconds, elapsed, args.warmup,
                                                        args.max_warmup, args.warmup), "",
        "- Machine: %s." % machine(),
        "- Ours: sora_sdk %s on %s (%s) and %s; numpy %s." % (
            ours_ready.get("sdk", "?"), ours_ready.get("engine", "?"), ours_ready.get("python", "?"),
            pypy_ready.get("python", "PyPy: not run"), ours_ready.get("numpy", "?")),
        "- Official: sora_sdk %s from PyPI (libwebrtc) on %s; numpy %s." % (
            off_ready.get("sdk", OFFICIAL_VERSION), off_ready.get("python", "?"), off_ready.get("numpy", "?")),
        "- Both run inside one network namespace over a veth pair to the local server "
        "(`python -m sora_sdk.testing` in the root namespace; libwebrtc gathers nothing on loopback, so ours "
        "uses the same path, `SORA_SDK_ICE_ADDRESS` = the namespace's address). Jobs run one at a time. "
        "CPU % = the client process alone (getrusage), 100 = one core. Ratio = ours / official.", "",
    ]
    # ---- sending
    lines += ["### Sending (sendonly, video only, 30 fps pushed from Python, %d kbit/s, degradation_preference %s)"
              % (args.bitrate, args.degradation or "left to the SDK"), "",
              "CPU ms per Mbit = the process's CPU time for each encoded megabit sent (CPU %% × 10 / Mbit/s). "
              "Bitrates apart: runs in which the two SDKs' rates differed by more than %.0f %% (listed below)."
              % (BITRATE_APART * 100), "",
              "| stream | CPU % ours | CPU % official | CPU ratio | target | kbit/s ours / off. "
              "| CPU ms per Mbit ours / off. | bitrates apart | warm-up s ours / off. | encoded fps ours / off. "
              "| encoded size ours / off. | RSS steady MB ours / off. | RSS peak MB ours / off. |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for codec in args.codecs:
        for w, h in args.sizes:
            row = "%s %dx%d" % (codec, w, h)
            ours, off, rr, target = cpu_cells("send", row, codec, "send")
            pair = lambda metric, d=1: "%s / %s" % (fmt(m("send", row, "ours", metric), d),  # noqa: E731
                                                    fmt(m("send", row, "official", metric), d))
            apart = bench.values.get(("send", row, "both", "apart"), [])
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                row, fmt(ours), fmt(off), fmt(rr, 2), target, pair("kbps", 0), pair("cpu_ms_per_mbit", 0),
                "%d of %d" % (sum(apart), len(apart)), pair("warmup_s"), pair("fps_encoded"),
                pair("frame_size"), pair("rss_steady_mb", 0), pair("rss_peak_mb", 0)))
    sources = ", ".join("%s: %s" % (rt, "/".join(sorted(x for x in bench.fps_sources.get(rt, ()) if x)) or "-")
                        for rt in ("ours", "official"))
    missed_warm = ["%s %s" % (rt, row) for (part, row, rt, metric), v in sorted(bench.values.items())
                   if part == "send" and metric == "warmup_missed" and sum(v)]
    if missed_warm:
        lines += ["", "Senders that did not reach their target bitrate within %.0f s (measured anyway): %s."
                  % (args.max_warmup, ", ".join(missed_warm))]
    if bench.flags:
        lines += ["", "Runs with bitrates more than %.0f %% apart:" % (BITRATE_APART * 100), ""]
        lines += ["- %s" % f for f in bench.flags]
    lines += ["", "Encoded fps from get_stats (outbound-rtp; a counter's delta over the window where the SDK "
              "reports one, else its `framesPerSecond`): %s." % sources]
    # ---- receiving
    lines += ["", "### Receiving (recvonly, SoraVideoSink → Python `on_frame`; one fixed sender: %s)"
              % ("ours on CPython" if args.sender == "ours" else "the official SDK"), "",
              "Latency: glass-to-glass, from the sender's `on_captured()` to the receiver's `on_frame` "
              "(frame counter in the pixels, one CLOCK_MONOTONIC), p50 (p95). A run in which a receiver got "
              "under %.0f fps (of 30 pushed) or no frame stalled: it is counted in the last column and left out "
              "of the medians." % STALLED_FPS, "",
              "| stream | CPU % ours | CPU % official | CPU ratio | target | fps ours / off. "
              "| latency ms ours | latency ms official | latency ratio (p50) | target (≤ 1.0) "
              "| RSS steady MB ours / off. | stalled runs ours / off. |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for codec in args.codecs:
        for w, h in args.sizes:
            row = "%s %dx%d" % (codec, w, h)
            ours, off, rr, target = cpu_cells("recv", row, codec, "receive")
            lr = ratio(m("recv", row, "ours", "lat_p50"), m("recv", row, "official", "lat_p50"))
            lt = verdict(lr, 1.0)
            if lt == "**MISSED**":
                missed.append("latency %s: ratio %.2f" % (row, lr))
            lat = lambda rt: "%s (%s)" % (fmt(m("recv", row, rt, "lat_p50")),  # noqa: E731
                                          fmt(m("recv", row, rt, "lat_p95")))
            stalls = lambda rt: "%d of %d" % (sum(bench.values.get(("recv", row, rt, "stalled"), [])),  # noqa: E731
                                              len(bench.values.get(("recv", row, rt, "stalled"), [])))
            lines.append("| %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s | %s / %s | %s / %s |" % (
                row, fmt(ours), fmt(off), fmt(rr, 2), target, fmt(m("recv", row, "ours", "fps")),
                fmt(m("recv", row, "official", "fps")), lat("ours"), lat("official"), fmt(lr, 2), lt,
                fmt(m("recv", row, "ours", "rss_steady_mb"), 0), fmt(m("recv", row, "official", "rss_steady_mb"), 0),
                stalls("ours"), stalls("official")))
    # ---- connect and data channel
    cr = ratio(m("connect", "connect", "ours", "connect_ms"), m("connect", "connect", "official", "connect_ms"))
    fr = ratio(m("connect", "connect", "ours", "connect_first_ms"),
               m("connect", "connect", "official", "connect_first_ms"))
    rows = [("connect() → own `connection.created`, ms (median of 5 after the first)", "connect", "connect",
             "connect_ms", "≤ official", cr, verdict(cr, 1.0)),
            ("the same for the process's first connect(), ms", "connect", "connect", "connect_first_ms",
             "≤ 1.2 × official", fr, verdict(fr, 1.2))]
    rtt = ratio(m("dc", "dc", "ours", "rtt_p50_ms"), m("dc", "dc", "official", "rtt_p50_ms"))
    small = ratio(m("dc", "dc", "ours", "small_msgs_per_s"), m("dc", "dc", "official", "small_msgs_per_s"))
    large = ratio(m("dc", "dc", "ours", "large_mb_per_s"), m("dc", "dc", "official", "large_mb_per_s"))
    rows += [("data channel round trip p50, ms (100 B, via the server)", "dc", "dc", "rtt_p50_ms", "(none)", rtt, ""),
             ("data channel throughput, 100 B messages/s", "dc", "dc", "small_msgs_per_s", "≥ official", small,
              verdict(small, 1.0, True)),
             ("data channel throughput, 16 KiB messages, MB/s", "dc", "dc", "large_mb_per_s", "≥ official", large,
              verdict(large, 1.0, True))]
    lines += ["", "### Connect and data channel", "",
              "| measurement | ours | official | ratio | target | |", "|---|---|---|---|---|---|"]
    for title, section, row, metric, target, rv, ok in rows:
        if ok == "**MISSED**":
            missed.append("%s: ratio %.2f" % (title, rv))
        digits = 0 if "messages/s" in title else (2 if "round trip" in title else 1)
        lines.append("| %s | %s | %s | %s | %s | %s |" % (title, fmt(m(section, row, "ours", metric), digits),
                                                       fmt(m(section, row, "official", metric), digits),
                                                       fmt(rv, 2), target, ok))
    # ---- python overhead
    lines += ["", "### Python overhead per call (µs)", "",
              "on_captured: median wall time of one call with no connection, paced at 200 calls/s, and the "
              "process CPU per call (including the SDK's own threads, after 1.5 s for start-up work; the cost of "
              "making the frame is subtracted). Both SDKs copy the frame inside the call and convert it to I420 "
              "(libyuv) on a thread of the video source. Target: the call's wall time ≤ the official's. on_frame "
              "dispatch: CPU of the thread that calls `on_frame`, per frame, outside the callback (both: I420 → "
              "BGR conversion (libyuv) and wrapping, on the sink's own thread), from the receive runs.", "",
              "| measurement | ours CPython | ours PyPy | official CPython | ratio (ours CPython / official) "
              "| target |", "|---|---|---|---|---|---|"]
    for w, h in ((640, 480), (1280, 720)):
        size = "%dx%d" % (w, h)
        for metric, title in (("call_us", "on_captured() call"), ("cpu_per_frame_us", "on_captured() CPU")):
            vals = [m("overhead", size, rt, metric) for rt in ("ours", "pypy", "official")]
            rv = ratio(vals[0], vals[2])
            ok = verdict(rv, 1.0) if metric == "call_us" else ""
            if ok == "**MISSED**":
                missed.append("%s %s wall time: ratio %.2f" % (title, size, rv))
            lines.append("| %s %s | %s | %s | %s | %s | %s |" % (title, size, fmt(vals[0]), fmt(vals[1]),
                                                               fmt(vals[2]), fmt(rv, 2), ok))
    for w, h in args.sizes:
        row = "VP8 %dx%d" % (w, h)
        if "VP8" not in args.codecs:
            continue
        for metric, title in (("dispatch_us", "on_frame dispatch"), ("data_us", "frame.data()")):
            vals = [m("recv", row, rt, metric) for rt in ("ours", "pypy", "official")]
            lines.append("| %s, %s | %s | %s | %s | %s |" % (title, row, fmt(vals[0]), fmt(vals[1]), fmt(vals[2]),
                                                           fmt(ratio(vals[0], vals[2]), 2)))
    if "VP8" in args.codecs:
        lines += ["", "Ours on PyPy, receiving VP8: " + "; ".join(
            "%dx%d CPU %s %%, %s fps, latency p50 %s ms" % (
                w, h, fmt(m("recv", "VP8 %dx%d" % (w, h), "pypy", "cpu_pct")),
                fmt(m("recv", "VP8 %dx%d" % (w, h), "pypy", "fps")),
                fmt(m("recv", "VP8 %dx%d" % (w, h), "pypy", "lat_p50"))) for w, h in args.sizes) + "."]
    # ---- verdict
    lines += ["", "### Targets", ""]
    if missed:
        lines += ["Not met:", ""] + ["- %s" % item for item in missed]
    else:
        lines.append("Every target with data is met.")
    if bench.stalls:
        lines += ["", "Receive runs that stalled (left out of the medians):", ""] + ["- %s" % x for x in bench.stalls]
    if bench.failures:
        lines += ["", "Jobs that failed (their cells are `-`):", ""] + ["- %s" % f for f in bench.failures]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    block = "%s\n%s%s\n" % (BEGIN, text, END)
    try:
        with open(RESULTS, encoding="utf-8") as f:
            current = f.read()
    except FileNotFoundError:
        current = "# Benchmark results\n\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _m: block, current, count=1)
    else:
        current = current.rstrip("\n") + "\n\n" + block
    with open(RESULTS, "w", encoding="utf-8") as f:
        f.write(current)


# --------------------------------------------------------------------------- main
def parse(argv):
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=int(env("SORA_COMPARE_RUNS", "3")),
                        help="runs to take medians over (default 3, env SORA_COMPARE_RUNS)")
    parser.add_argument("--seconds", type=float, default=float(env("SORA_COMPARE_SECONDS", "8")),
                        help="measuring window of each streaming job (default 8, env SORA_COMPARE_SECONDS)")
    parser.add_argument("--warmup", type=float, default=float(env("SORA_COMPARE_WARMUP", "4")),
                        help="least seconds of streaming before the window: senders go on until they are at their "
                             "target bitrate (default 4, env SORA_COMPARE_WARMUP)")
    parser.add_argument("--max-warmup", type=float, default=float(env("SORA_COMPARE_MAX_WARMUP", "40")),
                        help="most seconds a sender streams to reach its target bitrate (default 40)")
    parser.add_argument("--codecs", default=env("SORA_COMPARE_CODECS", "VP8,VP9,AV1"),
                        help="comma-separated (default VP8,VP9,AV1, env SORA_COMPARE_CODECS)")
    parser.add_argument("--sizes", default=env("SORA_COMPARE_SIZES", "640x480,1280x720"),
                        help="comma-separated WxH (default 640x480,1280x720, env SORA_COMPARE_SIZES)")
    parser.add_argument("--bitrate", type=int, default=int(env("SORA_COMPARE_BITRATE", "1000")),
                        help="video_bit_rate in kbps (default 1000)")
    parser.add_argument("--degradation", default=env("SORA_COMPARE_DEGRADATION", "MAINTAIN_RESOLUTION"),
                        help="degradation_preference of every sender: a SoraDegradationPreference name, or "
                             "'default' for the SDK's own (default MAINTAIN_RESOLUTION, so that both encode the "
                             "full picture; env SORA_COMPARE_DEGRADATION)")
    parser.add_argument("--sender", choices=("ours", "official"), default=env("SORA_COMPARE_SENDER", "ours"),
                        help="the SDK of the one fixed sender in the receive runs (default ours, on CPython)")
    parser.add_argument("--parts", default="connect,datachannel,overhead,send,recv",
                        help="which measurements (default all: connect,datachannel,overhead,send,recv)")
    parser.add_argument("--no-pypy", action="store_true", help="skip the PyPy rows")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = parser.parse_args(argv)
    args.parts = set(p.strip() for p in args.parts.split(",") if p.strip())
    args.degradation = None if args.degradation.lower() == "default" else args.degradation.upper()
    args.codecs = [c.strip().upper() for c in args.codecs.split(",") if c.strip()]
    args.sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s.strip()]
    if args.runs < 1 or not args.codecs or not args.sizes:
        parser.error("need at least one run, codec and size")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    started = time.monotonic()
    if not os.path.exists(OURS_PY):
        log("%s is missing: run `make setup build` first" % OURS_PY)
        return 2
    try:
        official = official_python()
    except OfficialUnavailable as exc:
        log("cannot compare: the official sora_sdk %s cannot be installed into .venv-official: %s"
            % (OFFICIAL_VERSION, exc))
        return 2
    pythons = {"ours": OURS_PY, "official": official}
    if not args.no_pypy:
        if os.path.exists(PYPY_PY):
            pythons["pypy"] = PYPY_PY
        else:
            log("%s is missing: no PyPy rows" % PYPY_PY)
    ns = NetNS("sorab")
    try:
        ns.create()
    except NetNSUnavailable as exc:
        log("cannot compare: the official SDK needs a network namespace (libwebrtc gathers no ICE candidates "
            "on loopback), and it cannot be made here: %s" % exc)
        return 2

    def on_signal(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_signal)
    server = None
    try:
        server = ServerProcess(ns.host_addr, OURS_PY, new_session=True)  # on the root-side veth address
        log("server %s; namespace %s (%s <-> %s); official %s" % (server.signaling_url, ns.name, ns.host_addr,
                                                                  ns.peer_addr, official))
        bench = Bench(args, ns, server, pythons)
        bench.run_all()
    finally:
        if server is not None:
            server.close()
        ns.destroy()
    text = report(bench, args, time.monotonic() - started)
    print(text)
    if not args.no_write:
        write_section(text)
        log("wrote the section of %s" % RESULTS)
    if bench.failures:
        log("%d job(s) failed; see the report" % len(bench.failures))
    for runtime in ("ours", "official"):
        if not any(key[2] == runtime for key in bench.values):
            log("nothing could be measured for %s" % runtime)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
