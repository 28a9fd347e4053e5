"""Frame layout and colour through the local Sora server, at sizes whose rows the engine pads.

The sender converts BGR to I420 once (BT.601 limited range, as libwebrtc does); the receiver's BGR
sink converts back with the same matrix, and its I420 sink hands out planes without row padding.
Widths that are not a multiple of 4 (and odd sizes) used to come out with padded rows."""
from __future__ import annotations

import threading
import time
from typing import Dict, List, Tuple

import numpy as np
import pytest

import sora_sdk
from tests.conftest import Recorder, wait_until

LEFT, RIGHT = (40, 160, 220), (200, 60, 30)  # BGR
TOLERANCE = 14  # per channel, after two conversions and lossy coding
MARGIN = 12  # columns/rows left out around the split between the halves and at the moving band
BAND = 24
SCRIBBLE = (255, 0, 255)


def bt601(bgr) -> np.ndarray:
    """The limited-range BT.601 Y, U, V of a BGR colour (or of every pixel of a BGR picture, on the last axis)."""
    bgr = np.asarray(bgr, np.float64)
    b, g, r = bgr[..., 0], bgr[..., 1], bgr[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return np.stack([y, u, v], -1)


def to_i420(frame: np.ndarray):
    """A BGR picture as I420 planes (BT.601; chroma averaged over 2x2, odd sizes rounded up)."""
    height, width = frame.shape[:2]
    yuv = bt601(frame)
    padded = np.pad(yuv, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    chroma = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, 3).mean((1, 3))
    planes = (yuv[..., 0], chroma[..., 1], chroma[..., 2])
    return tuple(np.ascontiguousarray(np.clip(np.rint(p), 0, 255).astype(np.uint8)) for p in planes)


def picture(width: int, height: int, colours=(LEFT, RIGHT)) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:, : width // 2] = colours[0]
    frame[:, width // 2:] = colours[1]
    return frame


class Feeder:
    """Sends `size` pictures at 20 fps (a box moves in the top band so the encoder keeps sending)."""

    def __init__(self, video) -> None:
        self.video = video
        self.size = (0, 0)
        self.i420 = False  # True: on_captured_i420() with the picture's planes
        self.colours = (LEFT, RIGHT)
        self.scribble = False  # True: the array is overwritten right after each on_captured() returns
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-layout-feeder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        count = 0
        frames: Dict[Tuple[int, int], np.ndarray] = {}
        while not self.stop.wait(0.05):
            size = self.size
            if size == (0, 0):
                continue
            colours = self.colours
            frame = frames.get((size, colours))
            if frame is None or self.scribble:
                frame = frames[(size, colours)] = picture(*size, colours)
            frame[:BAND] = 0
            x = (count * 4) % (size[0] - 16)
            frame[:BAND, x:x + 16] = 255
            if self.i420:
                self.video.on_captured_i420(*to_i420(frame))
            else:
                self.video.on_captured(frame)
                if self.scribble:
                    frame[:] = SCRIBBLE  # what the application does with its buffer next
            count += 1


class Collector:
    """Keeps the last frame of each size that a BGR and an I420 sink of one track delivered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bgr: Dict[Tuple[int, int], np.ndarray] = {}
        self.i420: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray, np.ndarray, tuple]] = {}
        self.errors: List[str] = []
        self.sinks: List = []

    def on_track(self, track) -> None:
        if track.kind != "video":
            return
        bgr = sora_sdk.SoraVideoSink(track)
        i420 = sora_sdk.SoraVideoSink(track, format="i420")
        bgr.on_frame = self._on_bgr
        i420.on_frame = self._on_i420
        self.sinks += [bgr, i420]

    def _on_bgr(self, frame) -> None:
        try:
            pixels = frame.data()
            assert pixels.shape == (frame.height, frame.width, 3), pixels.shape
            with self.lock:
                self.bgr[(frame.width, frame.height)] = pixels.copy()
        except Exception as e:  # reported by the test, not lost on the sink thread
            self.errors.append(repr(e))

    def _on_i420(self, frame) -> None:
        try:
            y, u, v = (p.copy() for p in frame.planes())
            flat = frame.data()
            with self.lock:
                self.i420[(frame.width, frame.height)] = (y, u, v, flat.shape)
        except Exception as e:
            self.errors.append(repr(e))

    def both(self, size) -> bool:
        with self.lock:
            return size in self.bgr and size in self.i420


def halves(plane: np.ndarray, width: int, scale: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Mean of the left and right half of a plane (or a BGR picture), below the moving band."""
    cols = plane.shape[1]
    split = width // 2 // scale
    margin = MARGIN // scale
    body = plane[BAND // scale + margin:]
    left = body[:, : split - margin].reshape(len(body) * (split - margin), -1).mean(0)
    right = body[:, split + margin:].reshape(len(body) * (cols - split - margin), -1).mean(0)
    return left, right


@pytest.fixture
def call(local_sora, sora):
    video = sora.create_video_source()
    sender = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendonly", channel_id="layout",
                                    video_source=video, audio=False, video_codec_type="VP8", video_bit_rate=1500)
    collector = Collector()
    receiver = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly",
                                      channel_id="layout", audio=False)
    recs = [Recorder(sender), Recorder(receiver)]
    receiver.on_track = collector.on_track  # after the Recorder, which sets its own
    feeder = None
    try:
        sender.connect()
        receiver.connect()
        for rec in recs:
            assert rec.connected.wait(15), rec.events
        feeder = Feeder(video)
        yield feeder, collector
    finally:
        if feeder is not None:
            feeder.stop.set()
            feeder.thread.join(5)
        for sink in collector.sinks:
            sink.close()
        receiver.disconnect()
        sender.disconnect()


@pytest.mark.parametrize("size,source", [((642, 362), "bgr"), ((321, 241), "bgr"), ((320, 240), "bgr"),
                                         ((321, 241), "i420")])
def test_padded_sizes_arrive_unpadded_in_bt601(call, size, source):
    feeder, collector = call
    feeder.i420 = source == "i420"
    feeder.size = size
    assert wait_until(lambda: collector.both(size), 20), (sorted(collector.bgr), sorted(collector.i420), collector.errors, len(collector.sinks))
    time.sleep(0.5)  # a few more frames: the first ones after a size change are still coarse
    assert not collector.errors, collector.errors
    width, height = size
    cw, ch = (width + 1) // 2, (height + 1) // 2
    with collector.lock:
        bgr = collector.bgr[size]
        y, u, v, flat_shape = collector.i420[size]
    assert bgr.shape == (height, width, 3)
    assert (y.shape, u.shape, v.shape) == ((height, width), (ch, cw), (ch, cw))
    assert flat_shape == ((height * 3 // 2, width) if width % 2 == 0 and height % 2 == 0
                          else (width * height + 2 * cw * ch,))
    for got, want in zip(halves(bgr, width), (LEFT, RIGHT)):
        assert np.all(np.abs(got - np.asarray(want)) <= TOLERANCE), (got, want)
    y_halves = halves(y, width)
    u_halves, v_halves = halves(u, width, 2), halves(v, width, 2)
    for side, want in enumerate((LEFT, RIGHT)):
        got = np.array([y_halves[side][0], u_halves[side][0], v_halves[side][0]])
        assert np.all(np.abs(got - bt601(want)) <= TOLERANCE / 2), (got, bt601(want))


def send_and_check_colours(feeder, collector, size, colours) -> None:
    """Feed pictures of `size` in two halves of `colours` and check what the receiver's sinks got."""
    feeder.colours = colours
    feeder.size = size
    assert wait_until(lambda: collector.both(size), 20), collector.errors
    time.sleep(0.5)  # a few more frames after the first ones
    assert not collector.errors, collector.errors
    width, height = size
    with collector.lock:
        bgr = collector.bgr[size]
        y = collector.i420[size][0]
    for got, want in zip(halves(bgr, width), colours):
        assert np.all(np.abs(got - np.asarray(want)) <= TOLERANCE), (got, want)
    for got, want in zip(halves(y, width), colours):
        assert abs(got[0] - bt601(want)[0]) <= TOLERANCE / 2, (got, bt601(want))


def test_array_reused_right_after_on_captured_does_not_change_the_frame_sent(call):
    # on_captured() copies the frame and converts it later on the source's thread: what the application writes
    # into its array after the call returns must never reach the receiver
    feeder, collector = call
    feeder.scribble = True
    send_and_check_colours(feeder, collector, (640, 480), (LEFT, RIGHT))


def test_hd_frames_are_sent_in_bt601(call):
    # From 1280x720 up, GStreamer's default colorimetry is BT.709: the fit stage before the encoder once let it
    # convert every frame (pure red's Y is 82 in BT.601 and 63 in BT.709), which receivers decode as BT.601
    feeder, collector = call
    send_and_check_colours(feeder, collector, (1280, 720), ((0, 0, 255), (0, 255, 0)))
