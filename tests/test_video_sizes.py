"""Every frame size on every video encoder (issue 11, item 3).

After 0.2 s of 641x481 or 3x5 frames, x264enc failed to initialise and the receiver got nothing for the rest of
the call, while `on_captured()` returned normally. Each encoder now gets every size fitted to what it takes
(encoder.c: an odd side cropped by one row or column where the encoder needs even sides, a side under its
minimum padded, one over its maximum cropped), as libwebrtc crops to an encoder's alignment.

For each encoder, one call through the local server: the sender goes through sizes from 1x1 up, odd ones
included, and a receiver (our recvonly) must decode frames of each fitted size, with no engine error.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(240)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(1, 1), (2, 2), (3, 5), (15, 17), (17, 9), (641, 481), (4097, 3), (3, 4097), (1920, 1080), (16384, 16),
         (320, 240)]
# what each encoder takes (encoder.c): (side alignment, minimum side, maximum side)
RULES = {"VP8": (1, 1, 16383), "VP9": (1, 1, 1 << 30), "AV1": (1, 4, 1 << 30), "H264": (2, 2, 1 << 30),
         "H264/openh264": (2, 16, 1 << 30), "H265": (2, 32, 1 << 30)}
# Sizes a receiver is known not to get (codec, size). Was AV1 16384x16 after 4x4097 and 1920x1080 (for more than
# 10 s the receiver's decoder got only the first 16384x16 unit) while the sender encoded with GStreamer's av1enc;
# with the shim's soraav1enc every size arrives.
KNOWN_RECEIVE_GAPS: set = set()
SYSTEM_OPENH264 = sorted(glob.glob("/usr/lib/*/libopenh264.so.7"))


def fitted(size: Tuple[int, int], rule: Tuple[int, int, int]) -> Tuple[int, int]:
    align, low, high = rule

    def side(v: int) -> int:
        v = min(v, high)
        v -= v % align
        return max(v, low)

    return side(size[0]), side(size[1])


def video_receiver(sora, url: str, channel: str, on_frame, sinks: list):
    """A recvonly connection (not yet connected) whose video tracks go to `on_frame` (their sinks in `sinks`)."""
    import sora_sdk

    receiver = sora.create_connection(signaling_urls=[url], role="recvonly", channel_id=channel, audio=False)

    def on_track(track) -> None:
        if track.kind == "video":
            sink = sora_sdk.SoraVideoSink(track)
            sink.on_frame = on_frame
            sinks.append(sink)

    receiver.on_track = on_track
    return receiver


def run_sizes(url: str, codec: str, rule_name: str, openh264: Optional[str] = None) -> Dict[str, object]:
    """Send each size of SIZES at 20 fps until our receiver has decoded 2 frames of its fitted size (at most 10 s);
    the sizes that never arrived, the engine errors and the connections' ends."""
    import sora_sdk

    errors: List[str] = []

    class Catch(logging.Handler):
        def emit(self, record) -> None:
            if record.levelno >= logging.WARNING:
                errors.append(record.getMessage())

    handler = Catch()
    logging.getLogger("sora_sdk").addHandler(handler)
    lock = threading.Lock()
    decoded: Dict[Tuple[int, int], int] = {}
    sinks = []
    ended: List[str] = []
    try:
        sender_sora = sora_sdk.Sora(openh264=openh264) if openh264 else sora_sdk.Sora()
        receiver_sora = sora_sdk.Sora() if openh264 else sender_sora
        channel = "sizes-" + rule_name

        def on_frame(frame) -> None:
            with lock:
                key = (frame.width, frame.height)
                decoded[key] = decoded.get(key, 0) + 1

        receiver = video_receiver(receiver_sora, url, channel, on_frame, sinks)
        video = sender_sora.create_video_source()
        sender = sender_sora.create_connection(signaling_urls=[url], role="sendonly", channel_id=channel,
                                               video_source=video, audio=False, video_codec_type=codec,
                                               video_bit_rate=800,
                                               # (the sizes as sent: no halving while the estimate ramps up)
                                               degradation_preference=sora_sdk.SoraDegradationPreference.DISABLED)
        created = threading.Event()
        for conn in (receiver, sender):
            conn.on_disconnect = lambda code, message: ended.append("%s: %s" % (code, message))
        sender.on_notify = lambda text: json.loads(text).get("event_type") == "connection.created" and created.set()
        receiver.connect()
        sender.connect()
        assert created.wait(15), ended
        missing = []
        # a warm-up at an ordinary size (the first key frame of a call can take a while, whatever the size)
        for index, size in enumerate([(320, 240)] + SIZES):
            want = fitted(size, RULES[rule_name])
            frame = np.zeros((size[1], size[0], 3), np.uint8)
            frame[:, : size[0] // 2] = (40, 160, 220)
            deadline = time.monotonic() + (15.0 if index == 0 else 10.0)
            sent = 0
            with lock:
                decoded.pop(want, None)
            while time.monotonic() < deadline:
                frame[0, 0] = sent % 256  # (never a frame the encoder can skip as a repeat)
                video.on_captured(frame)
                sent += 1
                time.sleep(0.05)
                with lock:
                    if decoded.get(want, 0) >= 2:
                        break
            with lock:
                if decoded.get(want, 0) < 2 and index > 0:
                    missing.append((size, want))
        stats = json.loads(sender.get_stats())
        outbound = [s for s in stats if s.get("type") == "outbound-rtp" and s.get("kind") == "video"]
        sender.disconnect()
        receiver.disconnect()
        for sink in sinks:
            sink.close()
        with lock:
            return {"missing": missing, "decoded": sorted(decoded), "errors": errors, "ended": ended,
                    "frames_encoded": [s.get("framesEncoded") for s in outbound]}
    finally:
        logging.getLogger("sora_sdk").removeHandler(handler)


@pytest.mark.parametrize("codec", ["VP8", "VP9", "AV1", "H264", "H265"])
def test_every_size_reaches_the_receiver(local_sora, codec):
    result = run_sizes(local_sora.signaling_url, codec, codec)
    print("[sizes] %s: %s" % (codec, result))
    assert not [m for m in result["missing"] if (codec, m[0]) not in KNOWN_RECEIVE_GAPS], result
    assert not result["errors"] and not result["ended"][:-2], result


OPENH264_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from sora_sdk.testing import LocalSora
from tests.test_video_sizes import run_sizes
with LocalSora() as server:
    print("RESULT " + json.dumps(run_sizes(server.signaling_url, "H264", "H264/openh264", sys.argv[2])))
"""


def run_with_openh264(script: str, timeout: float) -> Dict[str, object]:
    """Run `script` in a fresh interpreter (OpenH264 is loaded before the engine starts): its RESULT line."""
    out = subprocess.run([sys.executable, "-c", script, ROOT, SYSTEM_OPENH264[0]], capture_output=True, text=True,
                         timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    return json.loads(lines[-1][7:])


@pytest.mark.skipif(not SYSTEM_OPENH264, reason="Debian's libopenh264 7 is not installed")
def test_every_size_reaches_the_receiver_openh264():
    """The same with OpenH264."""
    result = run_with_openh264(OPENH264_SCRIPT, 200)
    print("[sizes] H264/openh264: %s" % result)
    assert not result["missing"], result
    assert not result["errors"] and not result["ended"][:-2], result


FAILURE_SCRIPT = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import sora_sdk
from sora_sdk.testing import LocalSora
with LocalSora() as server, sora_sdk.Sora(openh264=sys.argv[2]) as sora:
    video = sora.create_video_source()
    conn = sora.create_connection(signaling_urls=[server.signaling_url], role="sendonly", channel_id="too-big",
                                  video_source=video, audio=False, video_codec_type="H264")
    created, ended, out = threading.Event(), threading.Event(), []
    conn.on_notify = lambda t: json.loads(t).get("event_type") == "connection.created" and created.set()
    conn.on_disconnect = lambda code, message: (out.append([str(code), message]), ended.set())
    conn.connect()
    assert created.wait(15)
    video.on_captured(np.zeros((240, 320, 3), np.uint8))
    time.sleep(0.5)
    frame = np.zeros((2880, 5120, 3), np.uint8)
    started = time.monotonic()
    for _ in range(20):
        video.on_captured(frame)
        if ended.wait(0.1):
            break
    print("RESULT " + json.dumps({"ended": out, "seconds": time.monotonic() - started}))
"""


@pytest.mark.skipif(not SYSTEM_OPENH264, reason="Debian's libopenh264 7 is not installed")
def test_an_encoder_failure_ends_the_connection():
    """OpenH264 refuses frames over 9,437,184 pixels (4096x2304): 5120x2880 makes it fail. That must not be a
    call that goes on sending nothing: the connection ends with an on_disconnect that names the encoder."""
    result = run_with_openh264(FAILURE_SCRIPT, 120)
    print("[sizes] encoder failure: %s" % result)
    assert result["ended"], result
    code, message = result["ended"][0]
    assert code.endswith("INTERNAL_ERROR") and "Failed to send media on m-line 0" in message, result
    assert "openh264enc" in message, result
