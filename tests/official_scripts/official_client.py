"""An official-SDK client driven by a test: run by the ``.venv-official`` interpreter.

    python official_client.py '<config JSON>'

Config keys: ``url``, ``connection`` (keyword arguments of
``Sora.create_connection`` other than the sources; ``degradation_preference``
as a member name of ``SoraDegradationPreference``), ``send`` (optional:
``{"width", "height", "fps", "colours": [[b,g,r],[b,g,r]], "tone", "audio", "video", "noise"}``
-- feed a ``SoraVideoSource`` / ``SoraAudioSource`` with numpy frames; ``"noise": n`` adds fresh
random noise of +-n to every picture, like a camera's, so that the encoder spends every bit it is
allowed: for bit-rate tests),
``recv`` (optional: ``{"audio_rate": 48000}`` -- attach sinks to remote tracks),
``max_seconds`` (hard limit: the client disconnects and exits by itself).

Standard input: one JSON command per line, ``{"cmd": ..., "id": n, ...}``;
each is answered by a ``{"event": "reply", "id": n, ...}`` line. Commands:
``connect``, ``send_data`` (label, text), ``stats``, ``video`` (frame counts per
stream), ``audio`` (stream_id, samples, timeout: read a sink, report RMS and
peak frequency), ``disconnect`` (blocks until ``on_disconnect``), ``exit``.

Standard output: one JSON event per line (callbacks of the connection:
``set_offer``, ``notify``, ``connected``, ``track``, ``switched``,
``data_channel``, ``message``, ``signaling``, ``ws_close``, ``disconnect``...).

An exception escaping a callback aborts the official SDK's process, so every
callback catches everything and reports it as an ``error`` event.

Tear-down order (measured with 2025.4.0): sinks (and the remote tracks they
hold) first, while the connection is still up, then ``disconnect()`` and the
connection, then the sources, then ``Sora``. Dropping a ``SoraVideoSink`` or
a remote track *after* the connection has ended crashes the process (SIGSEGV),
so the remote tracks are kept only by their sinks.
"""
import base64
import gc
import json
import os
import sys
import threading
import time
import traceback

import numpy as np
import sora_sdk

_out_lock = threading.Lock()
_started = time.monotonic()


def emit(event, **fields):
    fields["event"] = event
    fields["t"] = round(time.monotonic() - _started, 4)
    line = json.dumps(fields, default=str)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def guarded(name):
    """Decorator: a callback that never raises into the SDK."""
    def wrap(fn):
        def inner(*args):
            try:
                fn(*args)
            except BaseException:  # noqa: B902 -- anything escaping aborts the process
                emit("error", where=name, traceback=traceback.format_exc())
        return inner
    return wrap


class Pump:
    """Feeds the sources in real time: a two-colour BGR picture with a moving box (30 fps) and a sine (10 ms)."""

    BAND = 48

    def __init__(self, video, audio, spec):
        self.video = video
        self.audio = audio
        self.width = int(spec.get("width", 320))
        self.height = int(spec.get("height", 240))
        self.fps = float(spec.get("fps", 30))
        self.tone = float(spec.get("tone", 440.0))
        self.rate = int(spec.get("rate", 48000))
        colours = spec.get("colours") or [[40, 160, 220], [200, 60, 30]]
        self.frame = np.empty((self.height, self.width, 3), np.uint8)
        self.frame[:, : self.width // 2] = colours[0]
        self.frame[:, self.width // 2:] = colours[1]
        self.noise = None
        if spec.get("noise"):
            amplitude = int(spec["noise"])
            rng = np.random.default_rng(1)
            base = self.frame.astype(np.int16)
            self.noise = [np.clip(base + rng.integers(-amplitude, amplitude + 1, base.shape, dtype=np.int16),
                                  0, 255).astype(np.uint8) for _ in range(24)]
        self.frames = 0
        self.chunks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pump", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            start = time.monotonic()
            samples = 0
            next_video = start
            chunk = self.rate // 100
            while not self._stop.wait(0.005):
                now = time.monotonic()
                if self.audio is not None:
                    while int((now - start) * self.rate) - samples >= chunk:
                        t = (np.arange(chunk) + samples) / self.rate
                        pcm = (np.sin(2 * np.pi * self.tone * t) * 8000).astype(np.int16).reshape(-1, 1)
                        self.audio.on_data(pcm)
                        samples += chunk
                        self.chunks += 1
                if self.video is not None and now >= next_video and self.noise is not None:
                    self.video.on_captured(self.noise[self.frames % len(self.noise)])
                    self.frames += 1
                    next_video = max(next_video + 1 / self.fps, now)
                elif self.video is not None and now >= next_video:
                    x = (self.frames * 8) % (self.width - 32)
                    self.frame[: self.BAND] = 0
                    self.frame[8:40, x:x + 32] = 255
                    self.video.on_captured(self.frame)
                    self.frames += 1
                    next_video = max(next_video + 1 / self.fps, now)
        except BaseException:
            emit("error", where="pump", traceback=traceback.format_exc())

    def stop(self):
        self._stop.set()
        self._thread.join(5)


class VideoRecord:
    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0
        self.size = None
        self.halves = None
        self.first_at = None


class Client:
    def __init__(self, config):
        self.config = config
        self.sora = sora_sdk.Sora()
        self.video_source = None
        self.audio_source = None
        self.pump = None
        self.tracks = []
        self.video_sinks = {}
        self.audio_sinks = {}
        self.video = {}
        self.connection_id = None
        self.disconnected = threading.Event()
        send = config.get("send")
        kwargs = dict(config.get("connection") or {})
        if isinstance(kwargs.get("degradation_preference"), str):  # JSON carries the enum's member name
            kwargs["degradation_preference"] = sora_sdk.SoraDegradationPreference[kwargs["degradation_preference"]]
        if send is not None:
            if send.get("video", True):
                self.video_source = self.sora.create_video_source()
                kwargs["video_source"] = self.video_source
            if send.get("audio", True):
                self.audio_source = self.sora.create_audio_source(1, int(send.get("rate", 48000)))
                kwargs["audio_source"] = self.audio_source
        self.conn = self.sora.create_connection(signaling_urls=[config["url"]], **kwargs)
        conn = self.conn
        conn.on_set_offer = self.on_set_offer
        conn.on_notify = self.on_notify
        conn.on_disconnect = self.on_disconnect
        conn.on_ws_close = self.on_ws_close
        conn.on_track = self.on_track
        conn.on_data_channel = self.on_data_channel
        conn.on_message = self.on_message
        conn.on_push = self.on_push
        conn.on_switched = self.on_switched
        conn.on_signaling_message = self.on_signaling_message

    # ---- callbacks (the SDK's io thread) ----
    @guarded("on_set_offer")
    def on_set_offer(self, text):
        message = json.loads(text)
        self.connection_id = message.get("connection_id")
        emit("set_offer", connection_id=self.connection_id, offer=message)

    @guarded("on_notify")
    def on_notify(self, text):
        message = json.loads(text)
        emit("notify", message=message)
        if message.get("event_type") == "connection.created" and \
                message.get("connection_id") == self.connection_id:
            emit("connected", connection_id=self.connection_id, message=message)

    @guarded("on_disconnect")
    def on_disconnect(self, code, message):
        emit("disconnect", code=int(code), name=str(code), message=message)
        self.disconnected.set()

    @guarded("on_ws_close")
    def on_ws_close(self, code, reason):
        emit("ws_close", code=int(code), reason=reason)

    @guarded("on_track")
    def on_track(self, track):
        if self.config.get("recv") is None:
            self.tracks.append(track)  # (with sinks, each sink holds its track)
        emit("track", kind=track.kind, stream_id=track.stream_id, id=track.id)
        if self.config.get("recv") is None:
            return
        if track.kind == "video":
            record = VideoRecord()
            self.video[track.stream_id] = record
            sink = sora_sdk.SoraVideoSink(track)
            sink.on_frame = self._frame_callback(record)
            self.video_sinks[track.stream_id] = sink
        elif track.kind == "audio":
            rate = int(self.config["recv"].get("audio_rate", 48000))
            self.audio_sinks[track.stream_id] = sora_sdk.SoraAudioSink(track, rate, 1)

    def _frame_callback(self, record):
        band = Pump.BAND

        @guarded("on_frame")
        def on_frame(frame):
            data = frame.data()
            height, width = data.shape[0], data.shape[1]
            body = data[band + 8:]
            left = body[:, : width // 2 - 16].reshape(-1, 3).mean(0).tolist()
            right = body[:, width // 2 + 16:].reshape(-1, 3).mean(0).tolist()
            with record.lock:
                record.count += 1
                record.size = [width, height]
                record.halves = [left, right]
                if record.first_at is None:
                    record.first_at = time.monotonic() - _started
        return on_frame

    @guarded("on_data_channel")
    def on_data_channel(self, label):
        emit("data_channel", label=label)

    @guarded("on_message")
    def on_message(self, label, data):
        emit("message", label=label, data_b64=base64.b64encode(bytes(data)).decode("ascii"))

    @guarded("on_push")
    def on_push(self, text):
        emit("push", message=json.loads(text))

    @guarded("on_switched")
    def on_switched(self, text):
        emit("switched", message=json.loads(text))

    @guarded("on_signaling_message")
    def on_signaling_message(self, via, direction, text):
        try:
            message = json.loads(text)
        except ValueError:
            message = {"raw": text}
        emit("signaling", via=str(via), direction=str(direction), type=message.get("type"), message=message)

    # ---- commands (main thread) ----
    def connect(self):
        self.conn.connect()
        if self.video_source is not None or self.audio_source is not None:
            self.pump = Pump(self.video_source, self.audio_source, self.config.get("send") or {})
        return {}

    def send_data(self, label, text=None, data_b64=None):
        data = base64.b64decode(data_b64) if data_b64 is not None else text.encode("utf-8")
        return {"ok": bool(self.conn.send_data_channel(label, data))}

    def stats(self):
        return {"stats": json.loads(self.conn.get_stats())}

    def video_status(self):
        out = {}
        for stream_id, record in self.video.items():
            with record.lock:
                out[stream_id] = {"count": record.count, "size": record.size, "halves": record.halves,
                                  "first_at": record.first_at}
        sent = self.pump.frames if self.pump is not None else 0
        return {"streams": out, "sent_frames": sent}

    def audio(self, stream_id=None, samples=9600, timeout=10.0, skip=9600):
        """Read `samples` (after skipping `skip`) from a sink without blocking the GIL for long."""
        if stream_id is None and self.audio_sinks:
            stream_id = next(iter(self.audio_sinks))
        sink = self.audio_sinks.get(stream_id)
        if sink is None:
            return {"error": "no audio sink for %r (have %s)" % (stream_id, list(self.audio_sinks))}
        rate = int((self.config.get("recv") or {}).get("audio_rate", 48000))
        chunks = []
        have = 0
        skipped = 0
        deadline = time.monotonic() + timeout
        # The sink buffers 10 ms of silence every 10 ms from on_track on, whether RTP came or not:
        # drop that backlog, then skip `skip` more samples (decoder warm-up) before measuring.
        sink.read(0, 0.0)
        while have < samples and time.monotonic() < deadline:
            ok, data = sink.read(0, 0.0)
            if not ok or data is None or len(data) == 0:
                time.sleep(0.02)
                continue
            data = np.array(data[:, 0], dtype=np.float64)
            if skipped < skip:
                cut = min(skip - skipped, len(data))
                skipped += cut
                data = data[cut:]
            if len(data):
                chunks.append(data)
                have += len(data)
        if not chunks:
            return {"samples": 0, "rms": 0.0, "peak_hz": None}
        signal = np.concatenate(chunks)[:samples]
        rms = float(np.sqrt(np.mean(signal ** 2)))
        spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
        peak = float(np.fft.rfftfreq(len(signal), 1.0 / rate)[int(np.argmax(spectrum))])
        return {"samples": int(len(signal)), "rms": rms, "peak_hz": peak, "stream_id": stream_id}

    def disconnect(self):
        started = time.monotonic()
        self.conn.disconnect()
        return {"seconds": time.monotonic() - started}

    def shutdown(self):
        """Tear down: sinks, connection, sources, then Sora (see the module docstring)."""
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        emit("shutdown", stage="sinks")
        self.video_sinks.clear()
        self.audio_sinks.clear()
        self.tracks = []
        gc.collect()
        conn = self.conn
        self.conn = None
        if conn is not None:
            emit("shutdown", stage="disconnect")
            conn.disconnect()  # a no-op once disconnected; connect() was always called first
            del conn
        gc.collect()
        emit("shutdown", stage="sources")
        self.video_source = None
        self.audio_source = None
        gc.collect()
        emit("shutdown", stage="sora")
        self.sora = None
        gc.collect()
        emit("shutdown", stage="done")


def main():
    config = json.loads(sys.argv[1])
    max_seconds = float(config.get("max_seconds", 60))
    client = Client(config)
    emit("ready", pid=os.getpid(), version=sora_sdk.__version__)
    connected = [False]
    lines = []
    cond = threading.Condition()

    def read_stdin():
        for line in sys.stdin:
            with cond:
                lines.append(line)
                cond.notify()
        with cond:
            lines.append(None)  # EOF: the test process is gone or done
            cond.notify()

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    deadline = time.monotonic() + max_seconds
    status = 0
    while True:
        with cond:
            while not lines and time.monotonic() < deadline:
                cond.wait(0.2)
            line = lines.pop(0) if lines else "timeout"
        if line is None:
            break
        if line == "timeout":
            emit("fatal", where="main", message="max_seconds (%.0f) reached" % max_seconds)
            status = 3
            break
        line = line.strip()
        if not line:
            continue
        command = json.loads(line)
        name = command.pop("cmd")
        seq = command.pop("id", None)
        if name == "exit":
            break
        try:
            if name == "connect":
                result = client.connect()
                connected[0] = True
            elif name == "send_data":
                result = client.send_data(**command)
            elif name == "stats":
                result = client.stats()
            elif name == "video":
                result = client.video_status()
            elif name == "audio":
                result = client.audio(**command)
            elif name == "disconnect":
                result = client.disconnect()
            else:
                result = {"error": "unknown command %r" % name}
        except Exception:
            result = {"error": traceback.format_exc()}
        emit("reply", id=seq, cmd=name, **result)
    if not connected[0]:
        # An unconnected SoraConnection hangs forever in disconnect(): connect, then end it.
        client.conn.connect()
    client.shutdown()
    emit("exiting", status=status)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
