"""Encoded-frame transforms end to end through the local Sora server (real encoders, real RTP, loopback).

The sender's transformers append a trailer (b"SORA" + a counter in 8 hex digits: no zero bytes, so no H.264
start code appears) to every encoded frame; the
receiver's transformers check and strip it before decoding. If either side did nothing, the receiver
would see no trailer (or the decoder would see garbage) and the checks below fail.
"""
from __future__ import annotations

import threading
import time
from typing import List

import numpy as np
import pytest

import sora_sdk
from sora_sdk import SoraTransformableFrameDirection as Direction
from tests.conftest import Recorder, wait_until
from tests.media_pump import H, RATE, W, Pump

MAGIC = b"SORA"
TRAILER = len(MAGIC) + 8
COLOURS = ((40, 160, 220), (200, 60, 30))


class Tagger:
    """Sender side: appends MAGIC + counter; records the frames' metadata."""

    def __init__(self, transformer, defer: bool = False) -> None:
        self.transformer = transformer
        self.lock = threading.Lock()
        self.count = 0
        self.seen: List[tuple] = []
        self.defer = defer
        self.pending: List = []
        transformer.on_transform = self.on_transform

    def on_transform(self, frame) -> None:
        data = frame.get_data()
        assert data.dtype == np.uint8 and data.ndim == 1 and not data.flags.writeable
        with self.lock:
            self.count += 1
            n = self.count
            self.seen.append((frame.direction, frame.mime_type, frame.payload_type, frame.ssrc,
                              getattr(frame, "is_key_frame", None), getattr(frame, "width", None),
                              getattr(frame, "height", None), len(data)))
        frame.set_data(np.concatenate([data, np.frombuffer(MAGIC + b"%08x" % n, np.uint8)]))
        if self.defer:  # give it back later, from another thread
            with self.lock:
                self.pending.append(frame)
        else:
            self.transformer.enqueue(frame)

    def flush_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self.lock:
                frames, self.pending = self.pending, []
            for frame in frames:
                self.transformer.enqueue(frame)
            time.sleep(0.005)


class Stripper:
    """Receiver side: checks and strips the trailer; counts good and bad frames."""

    def __init__(self, transformer) -> None:
        self.transformer = transformer
        self.lock = threading.Lock()
        self.good = 0
        self.bad = 0
        self.counters: List[int] = []
        self.seen: List[tuple] = []
        transformer.on_transform = self.on_transform

    def on_transform(self, frame) -> None:
        data = frame.get_data()
        ok = len(data) > TRAILER and bytes(data[-TRAILER:-8]) == MAGIC
        with self.lock:
            self.seen.append((frame.direction, frame.mime_type, frame.payload_type))
            if ok:
                self.good += 1
                self.counters.append(int(bytes(data[-8:]), 16))
            else:
                self.bad += 1
        if ok:
            frame.set_data(data[:-TRAILER])
        self.transformer.enqueue(frame)


def _sender(sora, url, channel, **kwargs):
    video = sora.create_video_source()
    audio = sora.create_audio_source(1, RATE)
    conn = sora.create_connection(signaling_urls=[url], role="sendonly", channel_id=channel, video_source=video,
                                  audio_source=audio, video_codec_type=kwargs.pop("codec", "VP8"),
                                  video_bit_rate=500, **kwargs)
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    return conn, Pump(video, audio, COLOURS)


class _Receiver:
    def __init__(self, sora, url, channel, make_transformers=True) -> None:
        self.video_t = Stripper(sora_sdk.SoraVideoFrameTransformer()) if make_transformers else None
        self.audio_t = Stripper(sora_sdk.SoraAudioFrameTransformer()) if make_transformers else None
        self.frames = 0
        self.halves = None
        self.audio_sink = None
        self.sinks = []
        self.conn = sora.create_connection(signaling_urls=[url], role="recvonly", channel_id=channel)
        self.rec = Recorder(self.conn)  # (it sets on_track too: ours goes after it)
        self.conn.on_track = self._on_track
        self.conn.connect()
        assert self.rec.connected.wait(15), self.rec.events

    def _on_track(self, track) -> None:
        if track.kind == "video":
            if self.video_t is not None:
                track.set_frame_transformer(self.video_t.transformer)
            sink = sora_sdk.SoraVideoSink(track)

            def on_frame(frame) -> None:
                data = frame.data()[60:]
                self.halves = (data[:, : frame.width // 2 - 16].reshape(-1, 3).mean(0),
                               data[:, frame.width // 2 + 16:].reshape(-1, 3).mean(0))
                self.size = (frame.width, frame.height)
                self.frames += 1

            sink.on_frame = on_frame
            self.sinks.append(sink)
        else:
            if self.audio_t is not None:
                track.set_frame_transformer(self.audio_t.transformer)
            self.audio_sink = sora_sdk.SoraAudioSink(track, RATE, 1)


@pytest.fixture
def parts():
    made = []
    yield made
    for item in reversed(made):
        try:
            item()
        except Exception:
            pass


def _assert_picture(receiver: _Receiver, frames: int = 10) -> None:
    assert wait_until(lambda: receiver.frames >= frames, 15), receiver.frames
    assert receiver.size == (W, H)
    for got, want in zip(receiver.halves, COLOURS):
        assert np.all(np.abs(np.asarray(got) - np.asarray(want)) <= 14), (receiver.halves, COLOURS)


def _assert_sound(receiver: _Receiver) -> None:
    assert wait_until(lambda: receiver.audio_sink is not None, 10)
    ok, _ = receiver.audio_sink.read(RATE // 5, 10)
    assert ok
    ok, samples = receiver.audio_sink.read(RATE // 10, 10)
    assert ok and float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 2000


@pytest.mark.parametrize("codec", ["VP8", "VP9", "H264"])
def test_sender_trailer_is_seen_and_stripped_by_the_receiver(local_sora, sora, parts, codec):
    receiver = _Receiver(sora, local_sora.signaling_url, "xf")
    parts.append(receiver.conn.disconnect)
    video_t = Tagger(sora_sdk.SoraVideoFrameTransformer())
    audio_t = Tagger(sora_sdk.SoraAudioFrameTransformer())
    conn, pump = _sender(sora, local_sora.signaling_url, "xf", codec=codec,
                         video_frame_transformer=video_t.transformer, audio_frame_transformer=audio_t.transformer)
    parts.append(conn.disconnect)
    parts.append(pump.stop)
    _assert_picture(receiver)
    _assert_sound(receiver)
    for stripper in (receiver.video_t, receiver.audio_t):
        assert wait_until(lambda: stripper.good >= 20, 10), (stripper.good, stripper.bad)
        assert stripper.bad == 0, (stripper.good, stripper.bad)
        assert stripper.counters == sorted(stripper.counters)  # in order, none repeated
    pt = {"VP8": 96, "VP9": 98, "H264": 102}[codec]
    direction, mime, payload_type, ssrc, key, width, height, size = video_t.seen[0]
    assert (direction, mime, payload_type, key, width, height) == (Direction.SENDER, "video/" + codec, pt, True, W, H)
    assert ssrc > 0 and size > 0
    assert {s[:3] for s in audio_t.seen} == {(Direction.SENDER, "audio/opus", 111)}
    assert {s[:3] for s in receiver.video_t.seen} == {(Direction.RECEIVER, "video/" + codec, pt)}
    assert {s[:3] for s in receiver.audio_t.seen} == {(Direction.RECEIVER, "audio/opus", 111)}


def test_frames_given_back_later_from_another_thread(local_sora, sora, parts):
    receiver = _Receiver(sora, local_sora.signaling_url, "xf-async")
    parts.append(receiver.conn.disconnect)
    video_t = Tagger(sora_sdk.SoraVideoFrameTransformer(), defer=True)
    stop = threading.Event()
    flusher = threading.Thread(target=video_t.flush_forever, args=(stop,), daemon=True)
    flusher.start()
    parts.append(lambda: (stop.set(), flusher.join(5)))
    conn, pump = _sender(sora, local_sora.signaling_url, "xf-async", video_frame_transformer=video_t.transformer)
    parts.append(conn.disconnect)
    parts.append(pump.stop)
    _assert_picture(receiver)
    assert wait_until(lambda: receiver.video_t.good >= 20, 10)
    assert receiver.video_t.bad == 0


def test_unset_or_raising_on_transform_lets_frames_through(local_sora, sora, parts):
    receiver = _Receiver(sora, local_sora.signaling_url, "xf-pass", make_transformers=False)
    parts.append(receiver.conn.disconnect)
    silent = sora_sdk.SoraVideoFrameTransformer()  # no on_transform at all
    raising = sora_sdk.SoraAudioFrameTransformer()
    calls = []

    def boom(frame):
        calls.append(frame)
        raise RuntimeError("user code failed")

    raising.on_transform = boom
    conn, pump = _sender(sora, local_sora.signaling_url, "xf-pass", video_frame_transformer=silent,
                         audio_frame_transformer=raising)
    parts.append(conn.disconnect)
    parts.append(pump.stop)
    _assert_picture(receiver)
    _assert_sound(receiver)
    assert len(calls) > 10


def test_short_circuiting_stops_the_callbacks_and_frames_flow_on(local_sora, sora, parts):
    receiver = _Receiver(sora, local_sora.signaling_url, "xf-short", make_transformers=False)
    parts.append(receiver.conn.disconnect)
    transformer = sora_sdk.SoraVideoFrameTransformer()
    calls = []

    def on_transform(frame):
        calls.append(1)
        transformer.enqueue(frame)

    transformer.on_transform = on_transform
    conn, pump = _sender(sora, local_sora.signaling_url, "xf-short", video_frame_transformer=transformer)
    parts.append(conn.disconnect)
    parts.append(pump.stop)
    assert wait_until(lambda: len(calls) >= 10, 10)
    transformer.start_short_circuiting()
    time.sleep(0.2)  # a frame already handed to on_transform may still finish
    before, frames_before = len(calls), receiver.frames
    assert wait_until(lambda: receiver.frames > frames_before + 10, 10), (frames_before, receiver.frames)
    assert len(calls) == before


def test_bad_uses_raise_clear_errors(local_sora, sora, parts):
    with pytest.raises(TypeError):
        sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendonly", channel_id="x",
                               video_frame_transformer=sora_sdk.SoraAudioFrameTransformer())
    with pytest.raises(TypeError):
        sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendonly", channel_id="x",
                               audio_frame_transformer=object())
    with pytest.raises(TypeError):
        sora_sdk.SoraTransformableVideoFrame()
    with pytest.raises(TypeError):
        sora_sdk.SoraVideoFrameTransformer().enqueue(b"not a frame")
    with pytest.raises(TypeError):
        sora_sdk.SoraVideoFrameTransformer().on_transform = None
    problems = []
    transformer = sora_sdk.SoraVideoFrameTransformer()

    def on_transform(frame):
        for bad, exc in ((np.zeros((2, 2), np.uint8), ValueError), (np.zeros(4, np.int16), ValueError),
                         ("text", TypeError)):
            try:
                frame.set_data(bad)
                problems.append("set_data(%r) accepted" % (bad,))
            except exc:
                pass
        try:
            frame.rtp_timestamp = -1
            problems.append("negative rtp_timestamp accepted")
        except ValueError:
            pass
        transformer.enqueue(frame)
        try:
            transformer.enqueue(frame)
            problems.append("second enqueue accepted")
        except sora_sdk.SoraInvalidState:
            pass

    transformer.on_transform = on_transform
    tracks = []
    receiver = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="xf-bad")
    rec = Recorder(receiver)
    receiver.on_track = tracks.append
    receiver.connect()
    parts.append(receiver.disconnect)
    assert rec.connected.wait(15)
    conn, pump = _sender(sora, local_sora.signaling_url, "xf-bad", video_frame_transformer=transformer)
    parts.append(conn.disconnect)
    parts.append(pump.stop)
    assert wait_until(lambda: any(t.kind == "video" for t in tracks), 10)
    video = next(t for t in tracks if t.kind == "video")
    with pytest.raises(ValueError):
        video.set_frame_transformer(sora_sdk.SoraAudioFrameTransformer())
    with pytest.raises(TypeError):
        video.set_frame_transformer("nope")
    time.sleep(1.0)
    assert not problems, problems
