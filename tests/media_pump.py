"""Real-time feeders for test senders: a two-colour frame with a moving box at 30 fps and a sine tone (`Pump`);
a sine pushed in chunks of a chosen size, with pauses or late pushes (`AudioPusher`)."""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Tuple

import numpy as np

W, H = 320, 240
RATE = 48000
TONE = 440.0
BAND = 48  # rows at the top where a box moves; the colour halves are measured below it


class Pump:
    """Feeds a sender's sources on a thread: a two-colour frame every 1/30 s and a sine, in real time."""

    def __init__(self, video, audio, colours, tone: float = TONE) -> None:
        """`audio` None: video only."""
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
            while self.audio is not None and int((now - start) * RATE) - samples >= 480:
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


class AudioPusher:
    """Pushes a sine into `source` on a thread, in real time, `chunk` samples at a time.

    `pauses`: (after_seconds, pause_seconds) pairs; the pusher stops pushing for that long (the samples of the
    pause are not sent, as an application that stops capturing). `jitter`: each push comes up to that many
    seconds late (uniformly), and the next ones catch up, as a Python thread under load pushes. `rate`: the
    source's sample rate."""

    def __init__(self, source, chunk: int, pauses: Tuple[Tuple[float, float], ...] = (), jitter: float = 0.0,
                 rate: int = RATE) -> None:
        self.source = source
        self.rate = rate
        self.jitter = jitter
        self._random = np.random.default_rng(11)
        self.chunk = chunk
        self.pauses = list(pauses)
        self.pushed = 0
        self.late = 0.0  # the longest a push came after its due time (s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audio-pusher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        sent_time = 0.0  # seconds of audio pushed so far (the pushing clock, pauses added to `start`)
        phase = 0
        pauses = list(self.pauses)
        while not self._stop.is_set():
            if pauses and sent_time >= pauses[0][0]:
                start += pauses.pop(0)[1]
            due = start + sent_time + (self._random.uniform(0, self.jitter) if self.jitter else 0.0)
            delay = due - time.monotonic()
            if delay > 0:
                if self._stop.wait(delay):
                    break
            else:
                self.late = max(self.late, -delay)
            t = (np.arange(self.chunk) + phase) / self.rate
            self.source.on_data((np.sin(2 * np.pi * TONE * t) * 8000).astype(np.int16).reshape(-1, 1))
            phase += self.chunk
            self.pushed += self.chunk
            sent_time += self.chunk / self.rate

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


CLEAN_PUSH = 0.02  # s: a window where no push came later than this measures the SDK, not the test's own lateness


def measure_concealment(read: Callable[[], Tuple[int, int]], pusher: AudioPusher, window: float = 5.0,
                        tries: int = 3, limit: float = 0.01) -> Dict[str, float]:
    """A receiver's concealment over `window` s of `pusher`'s audio; `read()` gives its (totalSamplesReceived,
    concealedSamples).

    On a loaded machine a push can come late (the test's thread is held), or the receiver's own playout can be
    starved, and the receiver conceals for that whatever the timestamps say. So up to `tries` windows are
    measured, and the first clean one (every push within CLEAN_PUSH of its time) under `limit` is returned,
    else the window that concealed least, clean ones first. Timestamps that are wrong conceal in every window
    (issue 11: 30-38 %), so taking the best window does not hide them."""
    clean_push = CLEAN_PUSH + pusher.jitter  # (the lateness the pusher adds on purpose is part of the case)
    results = []
    for _ in range(tries):
        pusher.late = 0.0
        total0, concealed0 = read()
        time.sleep(window)
        total1, concealed1 = read()
        total, concealed = total1 - total0, concealed1 - concealed0
        result = {"window": window, "total": float(total), "concealed": float(concealed),
                  "ratio": concealed / max(total, 1),
                  "late_push_ms": pusher.late * 1000, "clean": float(pusher.late <= clean_push),
                  "windows": float(len(results) + 1)}
        results.append(result)
        if result["clean"] and result["ratio"] < limit:
            return result
    return min(results, key=lambda r: (-r["clean"], r["ratio"]))


def assert_concealment(result: Dict[str, float], limit: float = 0.01, loaded_limit: float = 0.05) -> None:
    """Under `limit` concealed in a clean window (under `loaded_limit` if every window had late pushes; the
    wall-clock timestamps of issue 11 concealed 30-38 %), over a window that really received its audio."""
    assert result["total"] >= RATE * result["window"] * 0.9, result
    assert result["ratio"] < (limit if result["clean"] else loaded_limit), result
