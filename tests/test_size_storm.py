"""Storms of frame-size changes on every encoder (issue 11, items 4 and 7).

Changing the size every 3 frames (1x1, 3x5, 4097x3, 1920x1080, 640x480, 17x9, 160x120, ...) once crashed libaom
inside `aom_codec_encode` in 7 of 9 runs. No size sequence may crash an encoder, and the stream must recover
within 1 s after the sizes settle: the receiver (ours, through the local server) decodes frames of the settled
size within 1 s of the first one sent.

Each codec's runs go in a fresh interpreter, so that a crash is counted (exit status) instead of ending the test
session. SORA_STORM_RUNS sets the runs per codec (3 by default; the issue's bar is 10 of 10).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(600)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("SORA_STORM_RUNS", "3"))
STORM = [(1, 1), (3, 5), (4097, 3), (1920, 1080), (640, 480), (17, 9), (160, 120), (2, 2), (641, 481), (33, 65),
         (1280, 720), (5, 3)]
SETTLED = (320, 240)

SCRIPT = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import sora_sdk
from sora_sdk.testing import LocalSora
from tests.test_size_storm import STORM, SETTLED
from tests.test_video_sizes import video_receiver

codec, runs = sys.argv[2], int(sys.argv[3])
results = []
with LocalSora() as server, sora_sdk.Sora() as sora:
    for run in range(runs):
        lock = threading.Lock()
        decoded = []
        sinks = []
        ended = []
        channel = "storm-%s-%d" % (codec, run)
        def on_frame(frame):
            with lock:
                decoded.append((time.monotonic(), frame.width, frame.height))
        receiver = video_receiver(sora, server.signaling_url, channel, on_frame, sinks)
        video = sora.create_video_source()
        sender = sora.create_connection(signaling_urls=[server.signaling_url], role="sendonly", channel_id=channel,
                                        video_source=video, audio=False, video_codec_type=codec, video_bit_rate=800)
        created = threading.Event()
        sender.on_notify = lambda t: json.loads(t).get("event_type") == "connection.created" and created.set()
        for conn in (sender, receiver):
            conn.on_disconnect = lambda code, message: ended.append(message)
        receiver.connect()
        sender.connect()
        assert created.wait(15), ended
        frames = {}
        def picture(size, i):
            frame = frames.get(size)
            if frame is None:  # two colour halves (camera-like content, not noise)
                frame = frames[size] = np.empty((size[1], size[0], 3), np.uint8)
                frame[:, : size[0] // 2] = (40, 160, 220)
                frame[:, size[0] // 2:] = (200, 60, 30)
            frame[0, 0] = i % 256
            return frame
        # a start at the settled size (the first key frame), then the storm: a new size every 3 frames, 30 fps
        i = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(d[1:] == SETTLED for d in decoded):
            video.on_captured(picture(SETTLED, i)); i += 1; time.sleep(1 / 30)
        rng = np.random.default_rng(run)
        for step in range(60):
            size = STORM[step % len(STORM)] if step < len(STORM) else STORM[int(rng.integers(len(STORM)))]
            for _ in range(3):
                video.on_captured(picture(size, i)); i += 1; time.sleep(1 / 30)
        settled_at = time.monotonic()
        recovered = None
        while time.monotonic() < settled_at + 5:
            video.on_captured(picture(SETTLED, i)); i += 1; time.sleep(1 / 30)
            with lock:
                late = [d[0] for d in decoded if d[0] >= settled_at and d[1:] == SETTLED]
            if len(late) >= 3:
                recovered = late[0] - settled_at
                break
        with lock:
            storm_sizes = len({d[1:] for d in decoded})
        sender.disconnect()
        receiver.disconnect()
        for sink in sinks:
            sink.close()
        results.append({"run": run, "recovered_s": recovered, "sizes_decoded": storm_sizes, "ended": ended})
        print("RUN " + json.dumps(results[-1]), flush=True)
print("RESULT " + json.dumps(results), flush=True)
"""


@pytest.mark.parametrize("codec", ["VP8", "VP9", "AV1", "H264", "H265"])
def test_size_storm(codec):
    out = subprocess.run([sys.executable, "-c", SCRIPT, ROOT, codec, str(RUNS)], capture_output=True, text=True,
                         timeout=560)
    runs = [json.loads(line[4:]) for line in out.stdout.splitlines() if line.startswith("RUN ")]
    print("[storm] %s: exit %d, %d of %d runs completed: %s" % (codec, out.returncode, len(runs), RUNS, runs))
    assert out.returncode == 0, (out.returncode, runs, out.stderr[-3000:])
    assert len(runs) == RUNS, (runs, out.stderr[-3000:])
    for run in runs:
        assert run["recovered_s"] is not None and run["recovered_s"] <= 1.0, run
