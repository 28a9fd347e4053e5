"""Round-trip demo: a sender and a receiver on one Sora channel.

    python -m sora_sdk.demo                      # both ends, through an embedded local Sora server
    python -m sora_sdk.demo --help
    python -m sora_sdk.demo --signaling-url wss://sora.example.com/signaling --channel-id my-channel \\
        --metadata '{"access_token": "..."}' --role recvonly

The sender pushes a moving test pattern (with a frame counter drawn into it) and a 440 Hz tone; the receiver
decodes both, reads the counter back and prints what arrived, the glass-to-glass latency (from
`on_captured()` to the receiver's `on_frame`), the stats of each connection, and, with the local server,
the URL of a browser page that shows the channel.

Every option has an environment variable as its default (shown in --help). Exit status: 0 when the role's
media went through (sent, received, or both), 1 when it did not, 2 for a bad option.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional

import numpy as np

WIDTH, HEIGHT, FPS = 640, 480, 30
RATE, CHANNELS = 48000, 1
ROLES = ("both", "sendonly", "recvonly")
CODECS = ("VP8", "VP9", "AV1", "H264", "H265")
DEFAULT_CHANNEL = "sora-sdk-demo"
CONNECT_TIMEOUT = 15.0

# The frame counter: a row of CELL x CELL squares along the bottom of the picture, black or white, after two
# guard cells (white, black) that tell a stamped picture from another sender's.
CELL, COUNTER_BITS = 16, 20


# --------------------------------------------------------------------------- pictures and sound
def draw_pattern(index: int, frame: np.ndarray) -> None:
    """A moving colour gradient with a white box (BGR), drawn in place."""
    height, width = frame.shape[:2]
    frame[:, :, 0] = ((np.arange(width, dtype=np.uint16) + index * 4 % 256) % 256).astype(np.uint8)
    frame[:, :, 1] = ((np.arange(height, dtype=np.uint16) + index * 2 % 256) % 256).astype(np.uint8)[:, None]
    frame[:, :, 2] = 96
    left = (index * 8) % (width - 64)
    frame[height // 2 - 32:height // 2 + 32, left:left + 64] = 255


def _cells(counter: int) -> List[int]:
    return [255, 0] + [255 if (counter >> bit) & 1 else 0 for bit in range(COUNTER_BITS)]


def write_counter(frame: np.ndarray, counter: int) -> None:
    top = frame.shape[0] - CELL
    for position, value in enumerate(_cells(counter)):
        frame[top:, position * CELL:(position + 1) * CELL] = value


def read_counter(frame: np.ndarray) -> Optional[int]:
    """The counter drawn by write_counter(), or None when the picture carries none."""
    cells = len(_cells(0))
    height, width = frame.shape[:2]
    if width < cells * CELL or height < CELL:
        return None
    # The middle of each cell (the codec blurs the edges), averaged over the three colours.
    strip = frame[height - CELL + 4:height - 4, :cells * CELL].reshape(CELL - 8, cells, CELL, -1)
    levels = strip[:, :, 4:CELL - 4].mean(axis=(0, 2, 3))
    if not (levels[0] > 160 and levels[1] < 96):
        return None
    bits = levels[2:] > 128
    return int(sum(1 << bit for bit, on in enumerate(bits) if on))


def tone(start: int, count: int) -> np.ndarray:
    t = np.arange(start, start + count, dtype=np.float64) / RATE
    return (np.sin(2 * math.pi * 440.0 * t) * 8000).astype(np.int16).reshape(count, CHANNELS)


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# --------------------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


def _urls(text: str) -> List[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise argparse.ArgumentTypeError("no URL given")
    for url in urls:
        if not url.startswith(("ws://", "wss://")) or len(url) <= len("wss://"):
            raise argparse.ArgumentTypeError("%r is not a ws:// or wss:// URL" % url)
    return urls


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text)
    if not (math.isfinite(value) and 0 < value <= 86400):
        raise argparse.ArgumentTypeError("%r is not between 0 and 86400 seconds" % text)
    return value


def _metadata(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("%r is not JSON (%s)" % (text, exc))


def _channel(text: str) -> str:
    if not text or any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError("%r is not a channel id (empty or with spaces)" % text)
    return text


def _choice(choices, upper: bool = False) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = text.upper() if upper else text.lower()
        if value not in choices:
            raise argparse.ArgumentTypeError("%r is not one of %s" % (text, ", ".join(choices)))
        return value
    return convert


# (option, environment variable, converter, default when the variable is unset, help)
OPTIONS = (
    ("--signaling-url", "SORA_SIGNALING_URLS", _urls, None,
     "Sora's signaling URL(s), comma-separated; without one the demo starts a local Sora server"),
    ("--channel-id", "SORA_CHANNEL_ID", _channel, DEFAULT_CHANNEL, "channel to join"),
    ("--metadata", "SORA_METADATA", _metadata, None, "JSON metadata for the connect message (e.g. an access token)"),
    ("--role", "SORA_DEMO_ROLE", _choice(ROLES), "both",
     "both: a sender and a receiver; sendonly or recvonly: one end (%s)" % ", ".join(ROLES)),
    ("--codec", "SORA_DEMO_CODEC", _choice(CODECS, upper=True), "VP8", "video codec (%s)" % ", ".join(CODECS)),
    ("--seconds", "SORA_DEMO_SECONDS", _seconds, 5.0, "how long to send / receive"),
)


def parse_args(argv: Optional[List[str]] = None, environ: Optional[Dict[str, str]] = None) -> argparse.Namespace:
    environ = os.environ if environ is None else environ
    parser = _Parser(prog="python -m sora_sdk.demo",
                     description="Send a test pattern and a tone through Sora and receive them back: frames and "
                                 "audio received, glass-to-glass latency, stats. Options default to the "
                                 "environment variables named in brackets.")
    for option, variable, convert, default, text in OPTIONS:
        value = environ.get(variable)
        if value:
            try:
                default = convert(value)
            except argparse.ArgumentTypeError as exc:
                parser.error("%s (from the environment): %s" % (variable, exc))
        if default is None:
            shown = "none"
        elif isinstance(default, list):
            shown = ",".join(default)
        else:
            shown = json.dumps(default) if option == "--metadata" else str(default)
        parser.add_argument(option, type=convert, default=default, help="%s [%s; default %s]" % (text, variable, shown))
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- the two ends
class End:
    """One connection and what its callbacks saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn = None
        self.connection_id: Optional[str] = None
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.disconnect_reason: Optional[str] = None

    def attach(self, conn) -> None:
        self.conn = conn
        conn.on_set_offer = self._on_set_offer
        conn.on_notify = self._on_notify
        conn.on_disconnect = self._on_disconnect

    def _on_set_offer(self, text: str) -> None:
        self.connection_id = json.loads(text).get("connection_id")

    def _on_notify(self, text: str) -> None:
        message = json.loads(text)
        if message.get("event_type") == "connection.created" and message.get("connection_id") == self.connection_id:
            self.connected.set()

    def _on_disconnect(self, code, message: str) -> None:
        self.disconnect_reason = "%s %s" % (getattr(code, "name", code), message)
        self.ended.set()


class Receiver(End):
    """Receives every track of the channel: video through SoraVideoSink, audio through SoraAudioStreamSink."""

    def __init__(self, sent: Dict[int, float]) -> None:
        super().__init__("receiver")
        self.sent = sent  # counter -> monotonic time of on_captured (empty when the sender is elsewhere)
        self.lock = threading.Lock()
        self.sinks: list = []
        self.frames = 0
        self.size = (0, 0)
        self.latencies: List[float] = []
        self.audio_samples = 0
        self.audio_format = (0, 0)
        self.audio_energy = 0.0

    def attach(self, conn) -> None:
        super().attach(conn)
        conn.on_track = self._on_track

    def _on_track(self, track) -> None:  # on the connection's callback thread
        import sora_sdk

        if track.kind == "video":
            sink = sora_sdk.SoraVideoSink(track)
            sink.on_frame = self._on_video
        else:
            sink = sora_sdk.SoraAudioStreamSink(track, RATE, CHANNELS)
            sink.on_frame = self._on_audio
        self.sinks.append(sink)  # a sink receives for as long as it is referenced

    def _on_video(self, frame) -> None:  # on the video sink's own thread
        now = time.monotonic()
        counter = read_counter(frame.data())
        sent = self.sent.get(counter) if counter is not None else None
        with self.lock:
            self.frames += 1
            self.size = (frame.width, frame.height)
            if sent is not None:
                self.latencies.append((now - sent) * 1000)

    def _on_audio(self, frame) -> None:  # on the audio sink's own thread, every 10 ms
        samples = frame.data().astype(np.float64)
        with self.lock:
            self.audio_samples += frame.samples_per_channel
            self.audio_format = (frame.sample_rate_hz, frame.num_channels)
            self.audio_energy += float(np.square(samples).sum())

    def snapshot(self) -> Dict[str, Any]:
        with self.lock:
            rate = self.audio_format[0] or RATE
            count = self.audio_samples * max(self.audio_format[1], 1)
            rms = math.sqrt(self.audio_energy / count) if count else 0.0
            return {"frames": self.frames, "size": self.size, "latencies": list(self.latencies),
                    "audio_seconds": self.audio_samples / rate, "audio_format": self.audio_format,
                    "audio_dbfs": 20 * math.log10(rms / 32768) if rms > 0 else float("-inf")}


def _stats_lines(name: str, text: str) -> List[str]:
    """The RTP streams of this end's direction (the sender's outbound, the receiver's inbound) and codecs."""
    lines = []
    rtp = "outbound-rtp" if name == "sender" else "inbound-rtp"
    for s in json.loads(text):
        if s.get("type") in ("outbound-rtp", "inbound-rtp") and s["type"] != rtp:
            continue
        if s.get("type") == "outbound-rtp":
            lines.append("  %s outbound-rtp %-5s bytesSent=%d packetsSent=%d %s" % (
                name, s.get("kind"), s.get("bytesSent", 0), s.get("packetsSent", 0), s.get("encoderImplementation", "")))
        elif s.get("type") == "inbound-rtp":
            lines.append("  %s inbound-rtp  %-5s bytesReceived=%d packetsLost=%d%s" % (
                name, s.get("kind"), s.get("bytesReceived", 0), s.get("packetsLost", 0),
                " framesDecoded=%d" % s.get("framesDecoded", 0) if s.get("kind") == "video" else ""))
        elif s.get("type") == "codec":
            lines.append("  %s codec %s" % (name, s.get("mimeType")))
    return lines


def _sent_bytes(text: str) -> Dict[str, int]:
    """RTP bytes sent per kind ("audio", "video")."""
    sent = {"audio": 0, "video": 0}
    for s in json.loads(text):
        if s.get("type") == "outbound-rtp" and s.get("kind") in sent:
            sent[s["kind"]] += s.get("bytesSent", 0)
    return sent


# --------------------------------------------------------------------------- run
def run(args: argparse.Namespace, out=sys.stdout) -> int:
    import sora_sdk

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    sending = args.role in ("both", "sendonly")
    receiving = args.role in ("both", "recvonly")
    sent: Dict[int, float] = {}
    with ExitStack() as stack:
        urls = args.signaling_url
        if not urls:
            from sora_sdk.testing import LocalSora

            server = stack.enter_context(LocalSora(video_codec_type=args.codec))
            urls = [server.signaling_url]
            say("local Sora server: %s" % server.signaling_url)
            say("watch it in a browser: %s?channel_id=%s  (while the demo runs: --seconds 300; Chromium needs "
                "--allow-loopback-in-peer-connection, and `make web` the sora-js-sdk the page uses)"
                % (server.viewer_url, args.channel_id))
        sora = stack.enter_context(sora_sdk.Sora())
        common = dict(signaling_urls=urls, channel_id=args.channel_id, metadata=args.metadata,
                      video_codec_type=args.codec)
        ends: List[End] = []
        receiver = None
        if receiving:
            receiver = Receiver(sent)
            receiver.attach(sora.create_connection(role="recvonly", **common))
            ends.append(receiver)
        video = audio = None
        if sending:
            video = sora.create_video_source()
            audio = sora.create_audio_source(CHANNELS, RATE)
            sender = End("sender")
            sender.attach(sora.create_connection(role="sendonly", video_source=video, audio_source=audio, **common))
            ends.append(sender)
        for end in ends:
            stack.callback(end.conn.disconnect)  # runs before Sora closes (ExitStack unwinds in reverse)
        started = time.monotonic()
        for end in ends:
            end.conn.connect()  # returns at once; the outcome comes through the callbacks
        for end in ends:
            deadline = started + CONNECT_TIMEOUT
            while not end.connected.wait(0.05):
                if end.ended.is_set() or time.monotonic() > deadline:
                    say("%s: could not connect to %s: %s" % (
                        end.name, urls[0], end.disconnect_reason or "no answer in %.0f s" % CONNECT_TIMEOUT))
                    return 1
            say("%s connected: connection_id=%s in %.2f s" % (end.name, end.connection_id,
                                                               time.monotonic() - started))
        frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        samples = index = 0
        begin = time.monotonic()
        next_report = begin + 1
        try:
            while time.monotonic() - begin < args.seconds and not any(e.ended.is_set() for e in ends):
                now = time.monotonic()
                if sending:
                    index += 1
                    draw_pattern(index, frame)
                    write_counter(frame, index)
                    sent[index] = time.monotonic()
                    video.on_captured(frame)
                    # Audio is paced by the clock: push what is due since the start, in 10 ms steps.
                    due = int((now - begin) * RATE) // 480 * 480
                    if due > samples:
                        audio.on_data(tone(samples, due - samples))
                        samples = due
                if now >= next_report:
                    next_report += 1
                    say("  %4.1f s  %s" % (now - begin, _progress(index, receiver)))
                wake = begin + index / FPS if sending else now + 0.1
                time.sleep(max(0.0, wake - time.monotonic()))
        except KeyboardInterrupt:
            say("interrupted")
        elapsed = time.monotonic() - begin
        time.sleep(0.3 if sending and receiving else 0)  # the last frames in flight
        for end in ends:
            if end.ended.is_set():
                say("%s: the connection ended early: %s" % (end.name, end.disconnect_reason))
                return 1
        ok = True
        say("summary after %.1f s:" % elapsed)
        if sending:
            stats = ends[-1].conn.get_stats()
            sent_bytes = _sent_bytes(stats)
            say("  sent %d frames %dx%d (%s) and %.1f s of 440 Hz tone; RTP bytes: video %d, audio %d" % (
                index, WIDTH, HEIGHT, args.codec, samples / RATE, sent_bytes["video"], sent_bytes["audio"]))
            for kind in ("video", "audio"):
                if not sent_bytes[kind]:
                    say("  no %s was sent (the engine's errors, if any, are logged above)" % kind)
            ok = ok and sent_bytes["video"] > 0 and sent_bytes["audio"] > 0
        if receiver is not None:
            seen = receiver.snapshot()
            say("  received %d frames %dx%d and %.1f s of audio (%d Hz, %d ch, level %.1f dBFS)" % (
                seen["frames"], seen["size"][0], seen["size"][1], seen["audio_seconds"],
                seen["audio_format"][0], seen["audio_format"][1], seen["audio_dbfs"]))
            latencies = seen["latencies"]
            if latencies:
                say("  glass-to-glass latency (on_captured -> on_frame): median %.0f ms, p95 %.0f ms, "
                    "over %d frames" % (percentile(latencies, 0.5), percentile(latencies, 0.95), len(latencies)))
            elif sending:
                say("  glass-to-glass latency: no frame came back with its counter")
            if seen["frames"] == 0 and seen["audio_seconds"] == 0:
                say("  nothing received%s" % ("" if sending else ": is anyone sending on channel %r?"
                                              % args.channel_id))
            ok = ok and seen["frames"] > 0 and (seen["audio_seconds"] > 0 or not sending)
            if sending:
                ok = ok and bool(latencies)
        say("stats:")
        for end in ends:
            for line in _stats_lines(end.name, end.conn.get_stats()):
                say(line)
        for end in ends:
            end.conn.disconnect()
            say("%s on_disconnect: %s" % (end.name, end.disconnect_reason))
    say("%s: %s" % ("round trip" if sending and receiving else args.role, "ok" if ok else "FAILED"))
    return 0 if ok else 1


def _progress(sent_frames: int, receiver: Optional[Receiver]) -> str:
    parts = ["sent %d frames" % sent_frames] if sent_frames else []
    if receiver is not None:
        seen = receiver.snapshot()
        parts.append("received %d frames, %.1f s audio" % (seen["frames"], seen["audio_seconds"]))
        if seen["latencies"]:
            parts.append("latency %.0f ms" % percentile(seen["latencies"][-30:], 0.5))
    return ", ".join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ImportError, OSError) as exc:  # the shim or the engine could not be loaded
        sys.stderr.write("python -m sora_sdk.demo: error: %s\n" % exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
