"""Demo: send a synthetic camera and microphone to a Sora channel and print what happened.

    python -m sora_sdk.demo              # against the embedded local Sora server
    SORA_SIGNALING_URLS=wss://host/signaling SORA_CHANNEL_ID=ch python -m sora_sdk.demo

Optional: SORA_METADATA (JSON), SORA_DEMO_SECONDS (default 5).
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from contextlib import ExitStack

import numpy as np

import sora_sdk

WIDTH, HEIGHT, FPS = 640, 480, 30
RATE, CHANNELS = 48000, 1


def test_pattern(index: int, frame: np.ndarray) -> None:
    """A moving colour gradient with a white box, drawn in place (BGR)."""
    x = np.arange(WIDTH, dtype=np.uint16)
    frame[:, :, 0] = ((x + index * 4) % 256).astype(np.uint8)
    frame[:, :, 1] = ((np.arange(HEIGHT, dtype=np.uint16) + index * 2) % 256).astype(np.uint8)[:, None]
    frame[:, :, 2] = 96
    left = (index * 8) % (WIDTH - 64)
    frame[200:264, left:left + 64] = 255


def tone(start: int, count: int) -> np.ndarray:
    t = (np.arange(start, start + count) / RATE).astype(np.float64)
    return (np.sin(2 * math.pi * 440.0 * t) * 8000).astype(np.int16).reshape(count, CHANNELS)


def summarize(stats: list) -> str:
    lines = []
    for s in stats:
        if s["type"] == "outbound-rtp":
            lines.append("  outbound-rtp %-5s %-8s bytesSent=%d packetsSent=%d" % (
                s.get("kind"), s.get("encoderImplementation", ""), s.get("bytesSent", 0), s.get("packetsSent", 0)))
        elif s["type"] == "transport":
            lines.append("  transport dtlsState=%s iceState=%s" % (s.get("dtlsState"), s.get("iceState")))
        elif s["type"] == "codec":
            lines.append("  codec %s pt=%s" % (s.get("mimeType"), s.get("payloadType")))
    return "\n".join(lines)


def main() -> int:
    seconds = float(os.environ.get("SORA_DEMO_SECONDS", "5"))
    urls = [u for u in os.environ.get("SORA_SIGNALING_URLS", "").split(",") if u]
    channel_id = os.environ.get("SORA_CHANNEL_ID", "sora-sdk-demo")
    metadata = json.loads(os.environ["SORA_METADATA"]) if os.environ.get("SORA_METADATA") else None
    with ExitStack() as stack:
        if not urls:
            from sora_sdk.testing import LocalSora

            server = stack.enter_context(LocalSora())
            urls = [server.signaling_url]
            print("local Sora server: %s" % server.signaling_url)
        sora = stack.enter_context(sora_sdk.Sora())
        video = sora.create_video_source()
        audio = sora.create_audio_source(CHANNELS, RATE)
        conn = sora.create_connection(signaling_urls=urls, role="sendonly", channel_id=channel_id,
                                      metadata=metadata, video_source=video, audio_source=audio,
                                      video_codec_type="VP8")
        connected = threading.Event()
        ended = threading.Event()
        state = {}

        def on_set_offer(text: str) -> None:
            state["connection_id"] = json.loads(text).get("connection_id")

        def on_notify(text: str) -> None:
            message = json.loads(text)
            if message.get("event_type") == "connection.created" and \
                    message.get("connection_id") == state.get("connection_id"):
                connected.set()

        def on_disconnect(code, message: str) -> None:
            state["disconnect"] = (code, message)
            ended.set()

        conn.on_set_offer = on_set_offer
        conn.on_notify = on_notify
        conn.on_disconnect = on_disconnect
        started = time.monotonic()
        conn.connect()
        if not connected.wait(15):
            print("not connected within 15 s: %s" % (state.get("disconnect"),))
            conn.disconnect()
            return 1
        print("connected: connection_id=%s in %.2f s" % (state["connection_id"], time.monotonic() - started))
        frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        samples = 0
        index = 0
        begin = time.monotonic()
        while time.monotonic() - begin < seconds and not ended.is_set():
            test_pattern(index, frame)
            video.on_captured(frame)
            due = int((time.monotonic() - begin) * RATE)
            if due > samples:
                audio.on_data(tone(samples, due - samples))
                samples = due
            index += 1
            time.sleep(max(0.0, begin + index / FPS - time.monotonic()))
        stats = json.loads(conn.get_stats())
        print("sent %d frames and %.1f s of audio in %.1f s; stats:" % (index, samples / RATE, seconds))
        print(summarize(stats))
        conn.disconnect()
        print("on_disconnect: %s %s" % state.get("disconnect", ("?", "?")))
        ok = any(s["type"] == "outbound-rtp" and s.get("bytesSent", 0) > 0 for s in stats)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
