"""A real-time feeder for test senders: a two-colour frame with a moving box at 30 fps and a sine tone."""
from __future__ import annotations

import threading
import time

import numpy as np

W, H = 320, 240
RATE = 48000
TONE = 440.0
BAND = 48  # rows at the top where a box moves; the colour halves are measured below it


class Pump:
    """Feeds a sender's sources on a thread: a two-colour frame every 1/30 s and a sine, in real time."""

    def __init__(self, video, audio, colours, tone: float = TONE) -> None:
        self.video = video
        self.audio = audio
        self.frame = np.empty((H, W, 3), np.uint8)
        self.frame[:, : W // 2] = colours[0]
        self.frame[:, W // 2:] = colours[1]
        self.tone = tone
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-pump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        samples = 0
        next_video = start
        while not self._stop.wait(0.01):
            now = time.monotonic()
            while int((now - start) * RATE) - samples >= 480:
                t = (np.arange(480) + samples) / RATE
                chunk = (np.sin(2 * np.pi * self.tone * t) * 8000).astype(np.int16).reshape(-1, 1)
                self.audio.on_data(chunk)
                samples += 480
            if now >= next_video:
                x = (self.frames * 8) % (W - 32)
                self.frame[:BAND] = 0
                self.frame[8:40, x:x + 32] = 255
                self.video.on_captured(self.frame)
                self.frames += 1
                next_video = max(next_video + 1 / 30, now)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
