"""One measurement job of `make bench-compare`, run by ours or by the OFFICIAL Sora Python SDK.

    <python> benchmarks/compare_worker.py '<job JSON>'

The same file runs under `.venv` (ours, CPython), `.venv-pypy` (ours, PyPy) and
`.venv-official` (the official wheel). It uses only the public official API
(`import sora_sdk`), so whatever differs between the runs is the SDK. ``impl``
in the job says which SDK is meant: "ours" puts the repository root first on
sys.path; "official" removes it (and the working directory) so that the wheel
is imported, and the job fails if the import resolved elsewhere.

Job keys: ``impl``, ``kind`` (send | recv | connect | datachannel | overhead),
``url``, ``channel_id``, ``codec``, ``width``, ``height``, ``fps``, ``bitrate``
(kbps), ``degradation`` (send: a SoraDegradationPreference member name), ``warmup`` and ``seconds`` (the measuring window), ``hold`` (send: keep
sending after the measurement until standard input says ``stop``),
``max_seconds`` (hard limit).

Standard output: JSON lines ``{"event": ...}`` -- ``ready``, ``connected``,
``send_result`` / ``result`` (the numbers) and ``error``. Times are
``time.monotonic()`` (CLOCK_MONOTONIC), which network namespaces share, so the
driver can match a sender's push times against a receiver's arrival times.

Frames carry a 24-bit frame counter drawn into the top-left pixels (16x16
black/white blocks), as in benchmarks/sfu_fanout.py: a receiver reads it back
from the decoded BGR picture.

Everything here must also run on PyPy 3.9 (no 3.10+ syntax).
"""
import gc
import json
import os
import resource
import statistics
import sys
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BITS = 24
BLOCK = 16
PAD = 256  # the background pattern is this much wider than the frame; frames are shifted slices of it

_out_lock = threading.Lock()


def emit(event, **fields):
    fields["event"] = event
    line = json.dumps(fields)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def import_sdk(impl):
    if impl == "ours":
        sys.path.insert(0, ROOT)
    else:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != ROOT]
    import sora_sdk
    where = os.path.abspath(sora_sdk.__file__)
    inside = where.startswith(os.path.join(ROOT, "sora_sdk") + os.sep)
    if impl == "ours" and not inside:
        raise RuntimeError("impl=ours imported sora_sdk from %s" % where)
    if impl == "official" and inside:
        raise RuntimeError("impl=official imported the repository's sora_sdk (%s)" % where)
    return sora_sdk


# ---------------------------------------------------------------------------- process numbers
def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_kb():
    """(VmRSS, VmHWM) in KiB."""
    rss = hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


class Window:
    """CPU, wall time and RSS samples over one measuring window."""

    def __init__(self):
        self.rss = []
        self.cpu0 = cpu_seconds()
        self.t0 = time.monotonic()

    def run(self, seconds):
        end = self.t0 + seconds
        while True:
            self.rss.append(memory_kb()[0])
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(0.25, left))
        self.elapsed = time.monotonic() - self.t0
        self.cpu = cpu_seconds() - self.cpu0
        return self

    def numbers(self):
        return {"cpu_pct": 100.0 * self.cpu / self.elapsed, "elapsed": self.elapsed,
                "rss_steady_mb": statistics.median(self.rss) / 1024.0, "rss_peak_mb": memory_kb()[1] / 1024.0}


# ---------------------------------------------------------------------------- frames
class Frames:
    """Moving pictures (a scrolling gradient and a box) with the frame counter stamped in."""

    def __init__(self, np, width, height):
        self.np = np
        self.width = width
        self.height = height
        yy, xx = np.mgrid[0:height, 0:width + PAD]
        pattern = np.empty((height, width + PAD, 3), np.uint8)
        pattern[:, :, 0] = (xx % 256).astype(np.uint8)
        pattern[:, :, 1] = ((yy * 2) % 256).astype(np.uint8)
        pattern[:, :, 2] = (((xx + yy) // 2) % 256).astype(np.uint8)
        self.pattern = pattern
        self.buffer = np.empty((height, width, 3), np.uint8)

    def make(self, counter):
        shift = (counter * 4) % PAD
        self.np.copyto(self.buffer, self.pattern[:, shift:shift + self.width])
        box = 80
        x = (counter * 12) % (self.width - box)
        y = BLOCK + 8 + (counter * 5) % (self.height - box - BLOCK - 8)
        self.buffer[y:y + box, x:x + box] = 255
        for bit in range(BITS):
            self.buffer[0:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if (counter >> bit) & 1 else 0
        return self.buffer


def reader(np):
    weights = (1 << np.arange(BITS)).astype(np.int64)

    def read_stamp(frame):
        if frame.shape[1] < BITS * BLOCK or frame.shape[0] < BLOCK:
            return -1
        cells = frame[4:BLOCK - 4, :BITS * BLOCK].reshape(BLOCK - 8, BITS, BLOCK, 3)[:, :, 4:BLOCK - 4]
        bits = cells.mean(axis=(0, 2, 3)) > 128
        return int(weights[bits].sum())
    return read_stamp


class Pump:
    """Pushes stamped frames in real time; remembers each frame's push time (monotonic)."""

    def __init__(self, np, source, width, height, fps):
        self.source = source
        self.frames = Frames(np, width, height)
        self.fps = float(fps)
        self.sent = {}
        self.count = 0
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pump", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            next_at = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_at:
                    counter = self.count + 1
                    frame = self.frames.make(counter)
                    self.sent[counter] = time.monotonic()
                    self.source.on_captured(frame)
                    self.count = counter
                    next_at = max(next_at + 1.0 / self.fps, now)
                time.sleep(max(0.0, min(next_at - time.monotonic(), 0.02)))
        except BaseException:
            self.error = traceback.format_exc()

    def stop(self):
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------------------- the SDK objects
class Session:
    """Everything a job made, torn down in the order the official SDK needs: sinks, connections, sources, Sora."""

    def __init__(self, sdk):
        self.sdk = sdk
        self.sora = sdk.Sora()
        self.sinks = []
        self.conns = []
        self.sources = []
        self.errors = []

    def guarded(self, name, fn):
        """A callback that never raises into the SDK (an exception aborts the official SDK's process)."""
        def inner(*args):
            try:
                fn(*args)
            except BaseException:
                self.errors.append("%s: %s" % (name, traceback.format_exc()))
        return inner

    def connection(self, url, **kwargs):
        conn = Conn(self, url, **kwargs)
        self.conns.append(conn)
        return conn

    def close(self):
        self.sinks[:] = []
        gc.collect()
        for conn in self.conns:
            conn.end()
        self.conns[:] = []
        gc.collect()
        self.sources[:] = []
        gc.collect()
        self.sora = None
        gc.collect()


class Conn:
    def __init__(self, session, url, **kwargs):
        self.session = session
        self.conn = session.sora.create_connection(signaling_urls=[url], **kwargs)
        self.connection_id = None
        self.connected = threading.Event()
        self.channel_open = threading.Event()
        self.disconnected = threading.Event()
        self.started = False
        g = session.guarded
        self.conn.on_set_offer = g("on_set_offer", self._on_set_offer)
        self.conn.on_notify = g("on_notify", self._on_notify)
        self.conn.on_disconnect = g("on_disconnect", lambda code, message: self.disconnected.set())
        self.conn.on_data_channel = g("on_data_channel", lambda label: self.channel_open.set())

    def _on_set_offer(self, text):
        self.connection_id = json.loads(text).get("connection_id")

    def _on_notify(self, text):
        message = json.loads(text)
        if message.get("event_type") == "connection.created" and message.get("connection_id") == self.connection_id:
            self.connected.set()

    def start(self, timeout=20.0):
        """connect(); the seconds until this connection's own connection.created."""
        begin = time.perf_counter()
        self.started = True
        self.conn.connect()
        if not self.connected.wait(timeout):
            raise RuntimeError("not connected within %.0f s" % timeout)
        return time.perf_counter() - begin

    def end(self):
        if self.conn is None:
            return
        if not self.started:  # an unconnected official connection hangs in disconnect()
            self.conn.connect()
        self.conn.disconnect()
        self.conn = None


def outbound_video(stats_text):
    for s in json.loads(stats_text):
        if s.get("type") == "outbound-rtp" and s.get("kind") == "video":
            return s
    return {}


# ---------------------------------------------------------------------------- jobs
def warm_up(conn, least, most, bitrate):
    """Stream until the sender is at its target bitrate, so that both SDKs are measured in their steady state.

    libwebrtc starts its estimate at 300 kbit/s and ramps up over 10-20 s; a window taken before compares a full
    rate encoder with one still ramping. At target means: at least `least` seconds passed, the encoder's
    targetBitrate (outbound-rtp) reached 90 % of the configured bitrate (the allocation less the packet overhead),
    and the rate sent over the last 2 s is within 10 % of the 2 s before (an encoder may stay under its target
    on simple pictures, so the sent rate alone cannot say). At most `most` seconds. Returns how it went."""
    begin = time.monotonic()
    samples = []  # (time, bytesSent, targetBitrate)
    while True:
        time.sleep(0.5)
        now = time.monotonic()
        stat = outbound_video(conn.conn.get_stats())
        samples.append((now, stat.get("bytesSent", 0), stat.get("targetBitrate")))
        elapsed = now - begin
        if elapsed >= most:
            return {"warmup_s": elapsed, "warmup_reached": False}
        if elapsed < least or len(samples) < 9:
            continue
        t0, b0, _ = samples[-9]
        t1, b1, _ = samples[-5]
        t2, b2, target = samples[-1]
        before = (b1 - b0) * 8 / max(t1 - t0, 1e-6)
        last = (b2 - b1) * 8 / max(t2 - t1, 1e-6)
        if target and target >= 0.9 * bitrate and before > 0 and abs(last - before) <= 0.1 * before:
            return {"warmup_s": elapsed, "warmup_reached": True}


def job_send(sdk, np, session, job, stdin_lines):
    video = session.sora.create_video_source()
    session.sources.append(video)
    extra = {}
    if job.get("degradation"):
        extra["degradation_preference"] = getattr(sdk.SoraDegradationPreference, job["degradation"])
    conn = session.connection(job["url"], role="sendonly", channel_id=job["channel_id"], video_source=video,
                              audio=False, video=True, video_codec_type=job["codec"],
                              video_bit_rate=int(job.get("bitrate", 1000)), **extra)
    connect_s = conn.start()
    emit("connected", connect_ms=connect_s * 1000)
    pump = Pump(np, video, job["width"], job["height"], job.get("fps", 30))
    warm = warm_up(conn, float(job.get("warmup", 4.0)), float(job.get("max_warmup", 40.0)),
                   int(job.get("bitrate", 1000)) * 1000)
    s0 = outbound_video(conn.conn.get_stats())
    frames0 = pump.count
    window = Window().run(float(job["seconds"]))
    s1 = outbound_video(conn.conn.get_stats())
    frames1 = pump.count
    elapsed = window.elapsed
    result = window.numbers()
    for key in ("framesEncoded", "framesSent"):
        if key in s0 and key in s1:
            result["fps_encoded"] = (s1[key] - s0[key]) / elapsed
            result["fps_from"] = key
            break
    else:  # (ours reports framesPerSecond, not the counters)
        result["fps_encoded"] = s1.get("framesPerSecond")
        result["fps_from"] = "framesPerSecond"
    result.update({
        "fps_pushed": (frames1 - frames0) / elapsed,
        "kbps": (s1.get("bytesSent", 0) - s0.get("bytesSent", 0)) * 8 / elapsed / 1000.0,
        "frame_size": "%sx%s" % (s1.get("frameWidth", "?"), s1.get("frameHeight", "?")),
        "encoder": s1.get("encoderImplementation"),
        "limitation": s1.get("qualityLimitationReason"),
        "connect_ms": connect_s * 1000,
        "target_bitrate": s1.get("targetBitrate"),
    })
    result.update(warm)
    if pump.error:
        raise RuntimeError("pump: " + pump.error)
    emit("send_result", **result)
    if job.get("hold"):
        deadline = time.monotonic() + float(job.get("max_seconds", 120))
        while time.monotonic() < deadline:
            with stdin_lines["cond"]:
                if stdin_lines["lines"]:
                    break
                stdin_lines["cond"].wait(0.2)
    pump.stop()
    result["sent"] = [[c, t] for c, t in pump.sent.items()]
    return result


def job_recv(sdk, np, session, job, stdin_lines):
    read_stamp = reader(np)
    lock = threading.Lock()
    state = {"recording": False, "frames": 0, "total": 0, "first": None, "samples": [], "outside": [], "body": [],
             "data": [], "last_out": {}}

    def on_frame(frame):
        t_in = time.thread_time()
        now = time.monotonic()
        d0 = time.perf_counter()
        data = frame.data()
        d1 = time.perf_counter()
        counter = read_stamp(data)
        ident = threading.get_ident()
        with lock:
            if state["first"] is None:
                state["first"] = now
            state["total"] += 1
            last = state["last_out"].get(ident)
            if state["recording"]:
                state["frames"] += 1
                state["samples"].append([counter, now])
                state["data"].append(d1 - d0)
                if last is not None:
                    state["outside"].append(t_in - last)
        t_out = time.thread_time()
        with lock:
            state["last_out"][ident] = t_out
            if state["recording"]:
                state["body"].append(t_out - t_in)

    guarded_frame = session.guarded("on_frame", on_frame)

    def on_track(track):
        if track.kind != "video":
            return
        sink = sdk.SoraVideoSink(track)
        sink.on_frame = guarded_frame
        session.sinks.append(sink)

    conn = session.connection(job["url"], role="recvonly", channel_id=job["channel_id"], audio=False, video=True,
                              video_codec_type=job["codec"])
    conn.conn.on_track = session.guarded("on_track", on_track)
    connect_s = conn.start()
    emit("connected", connect_ms=connect_s * 1000)
    deadline = time.monotonic() + float(job.get("first_frame_timeout", 10))
    while state["first"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if state["first"] is None:
        raise RuntimeError("no video frame within %.0f s of connecting (errors: %s)"
                           % (float(job.get("first_frame_timeout", 10)), session.errors[:2]))
    time.sleep(float(job.get("warmup", 2.0)))
    with lock:
        state["recording"] = True
    window = Window().run(float(job["seconds"]))
    with lock:
        state["recording"] = False
    inbound = {}
    for stat in json.loads(conn.conn.get_stats()):
        if stat.get("type") == "inbound-rtp" and stat.get("kind") == "video":
            inbound = {k: stat[k] for k in ("framesDecoded", "framesDropped", "keyFramesDecoded", "packetsLost",
                                            "packetsReceived", "pliCount", "nackCount", "firCount") if k in stat}
    result = window.numbers()
    result["inbound"] = inbound
    result["frames_total"] = state["total"]
    us = lambda values: statistics.median(values) * 1e6 if values else None  # noqa: E731
    result.update({
        "fps": state["frames"] / window.elapsed,
        "samples": state["samples"],
        "dispatch_us": us(state["outside"]),
        "body_us": us(state["body"]),
        "data_us": us(state["data"]),
        "connect_ms": connect_s * 1000,
        "first_frame_ms": (state["first"] - window.t0) * 1000,
    })
    return result


def job_connect(sdk, np, session, job, stdin_lines):
    samples = []
    first = None
    for i in range(int(job.get("count", 5)) + 1):
        conn = session.connection(job["url"], role="recvonly", channel_id=job["channel_id"])
        seconds = conn.start()
        if i == 0:
            first = seconds  # the first connection of the process also builds the engine's factories
        else:
            samples.append(seconds)
        conn.end()
        session.conns.remove(conn)
    return {"connect_ms": statistics.median(samples) * 1000, "connect_first_ms": first * 1000,
            "connect_all_ms": [s * 1000 for s in samples]}


def job_datachannel(sdk, np, session, job, stdin_lines):
    """`#` messages A -> server -> B. Round trip: B echoes from on_message, sequential. Throughput: A -> B."""
    channels = [{"label": "#bench", "direction": "sendrecv"}]
    kwargs = dict(role="sendrecv", channel_id=job["channel_id"], data_channel_signaling=True,
                  data_channels=channels, audio=False, video=False)
    a = session.connection(job["url"], **kwargs)
    b = session.connection(job["url"], **kwargs)
    cond = threading.Condition()
    got = {"a": 0, "b": 0, "b_bytes": 0, "b_last": 0.0, "echo": True}

    def on_a(label, data):
        with cond:
            got["a"] += 1
            cond.notify_all()

    def on_b(label, data):
        if got["echo"]:
            b.conn.send_data_channel(label, data)
            return
        now = time.monotonic()
        with cond:
            got["b"] += 1
            got["b_bytes"] += len(data)
            got["b_last"] = now
            cond.notify_all()

    a.conn.on_message = session.guarded("on_message", on_a)
    b.conn.on_message = session.guarded("on_message", on_b)
    a.start()
    b.start()
    if not (a.channel_open.wait(10) and b.channel_open.wait(10)):
        raise RuntimeError("the data channels did not open")
    time.sleep(0.3)
    small = bytes(int(job.get("rtt_size", 100)))
    rtts = []
    for i in range(int(job.get("rtt_count", 200))):
        with cond:
            before = got["a"]
        start = time.monotonic()
        a.conn.send_data_channel("#bench", small)
        with cond:
            while got["a"] == before and time.monotonic() - start < 5:
                cond.wait(0.5)
            if got["a"] > before:
                rtts.append(time.monotonic() - start)
    got["echo"] = False
    time.sleep(0.2)
    results = {"rtt_p50_ms": statistics.median(rtts) * 1000 if rtts else None, "rtt_count": len(rtts)}
    window = int(job.get("window", 64))
    for name, size, count in (("small", int(job.get("small_size", 100)), int(job.get("small_count", 3000))),
                              ("large", int(job.get("large_size", 16384)), int(job.get("large_count", 400)))):
        payload = bytes(size)
        with cond:
            got["b"] = 0
            got["b_bytes"] = 0
        sent = 0
        start = time.monotonic()
        cpu0 = cpu_seconds()
        deadline = start + 60
        for _ in range(count):
            with cond:
                while sent - got["b"] >= window and time.monotonic() < deadline:
                    cond.wait(0.5)
            if a.conn.send_data_channel("#bench", payload):
                sent += 1
        with cond:
            while got["b"] < sent and time.monotonic() < deadline:
                cond.wait(0.5)
            delivered, nbytes, last = got["b"], got["b_bytes"], got["b_last"]
        elapsed = max(last - start, 1e-6)
        results[name] = {"size": size, "sent": sent, "delivered": delivered, "msgs_per_s": delivered / elapsed,
                         "mb_per_s": nbytes / elapsed / 1e6,
                         "cpu_pct": 100.0 * (cpu_seconds() - cpu0) / (time.monotonic() - start)}
    return results


def job_overhead(sdk, np, session, job, stdin_lines):
    """on_captured() with no connection: median wall µs per call (paced), and process CPU per frame."""
    # Start-up work of the SDK outside the CPU window (ours loads its engine plugins on a thread at import, about
    # 70 ms of CPU that the first size's per-frame CPU would count).
    time.sleep(float(job.get("settle", 1.5)))
    video = session.sora.create_video_source()
    session.sources.append(video)
    out = {}
    for width, height in ((640, 480), (1280, 720)):
        frames = Frames(np, width, height)
        frame = frames.make(1)
        for i in range(20):
            video.on_captured(frame)
        calls = int(job.get("calls", 200))
        period = 1.0 / float(job.get("rate", 200))
        walls = []
        cpu0 = cpu_seconds()
        next_at = time.monotonic()
        for i in range(calls):
            frame = frames.make(i + 2)
            begin = time.perf_counter()
            video.on_captured(frame)
            walls.append(time.perf_counter() - begin)
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
        time.sleep(0.2)  # let any asynchronous conversion finish inside the CPU window
        cpu = cpu_seconds() - cpu0
        # the CPU that making the frames costs (same code, no SDK call), to subtract
        gen0 = cpu_seconds()
        for i in range(calls):
            frames.make(i + 2)
        gen = cpu_seconds() - gen0
        out["%dx%d" % (width, height)] = {"call_us": statistics.median(walls) * 1e6,
                                          "cpu_per_frame_us": max(0.0, cpu - gen) / calls * 1e6}
    return {"on_captured": out}


JOBS = {"send": job_send, "recv": job_recv, "connect": job_connect, "datachannel": job_datachannel,
        "overhead": job_overhead}


def versions(sdk, np, impl):
    import platform
    out = {"python": "%s %s" % (platform.python_implementation(), platform.python_version()),
           "sdk": getattr(sdk, "__version__", "unknown"), "numpy": np.__version__,
           "sdk_path": os.path.dirname(os.path.abspath(sdk.__file__))}
    if impl == "ours":
        from sora_sdk.sora import engine_version  # (not official API: only to name the engine in the report)
        out["engine"] = engine_version()
    return out


def main():
    job = json.loads(sys.argv[1])
    limit = float(job.get("max_seconds", 180))
    # the hard limit: whatever happens, this process ends (the driver has what was printed)
    watchdog = threading.Timer(limit, lambda: (emit("error", message="max_seconds (%.0f) reached" % limit),
                                               os._exit(3)))
    watchdog.daemon = True
    watchdog.start()
    try:
        sdk = import_sdk(job["impl"])
        import numpy as np
    except BaseException:
        emit("error", message=traceback.format_exc())
        sys.stdout.flush()
        os._exit(2)
    emit("ready", pid=os.getpid(), **versions(sdk, np, job["impl"]))
    stdin_lines = {"cond": threading.Condition(), "lines": []}

    def read_stdin():
        for line in sys.stdin:
            with stdin_lines["cond"]:
                stdin_lines["lines"].append(line)
                stdin_lines["cond"].notify_all()
        with stdin_lines["cond"]:
            stdin_lines["lines"].append(None)
            stdin_lines["cond"].notify_all()

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    status = 0
    session = None
    try:
        session = Session(sdk)
        result = JOBS[job["kind"]](sdk, np, session, job, stdin_lines)
        if session.errors:
            result["callback_errors"] = session.errors[:3]
        emit("result", **result)
    except BaseException:
        emit("error", message=traceback.format_exc(), callback_errors=session.errors[:3] if session else [])
        status = 1
    try:
        if session is not None:
            session.close()
    except BaseException:
        emit("error", message="tear-down: " + traceback.format_exc())
    sys.stdout.flush()
    os._exit(status)  # skip interpreter finalisation (extension objects already released in order)


if __name__ == "__main__":
    main()
