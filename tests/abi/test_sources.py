"""Source rules of sora_c.h: video/audio sources, pushes, attaching them to a peer, destroying them mid-stream."""
from __future__ import annotations

import json
import threading
import time

import pytest

from .conftest import (INVALID_ARGUMENT, OK, OPUS_CAPS, UNSUPPORTED, VP8_CAPS, codec_params, expect, ffi, last_error,
                       lib, negotiate, sdp_media_kinds, sdp_mids, wait_until)

RECVONLY, SENDONLY = lib.SORA_DIRECTION_RECVONLY, lib.SORA_DIRECTION_SENDONLY


def video_source(ctx):
    out = ffi.new("sora_video_source **")
    expect(lib.sora_video_source_create(ctx.ptr, out), OK, "sora_video_source_create")
    assert out[0] != ffi.NULL
    return out[0]


def audio_source(ctx, channels=1, rate=48000):
    out = ffi.new("sora_audio_source **")
    expect(lib.sora_audio_source_create(ctx.ptr, channels, rate, out), OK,
           "sora_audio_source_create(%d, %d)" % (channels, rate))
    assert out[0] != ffi.NULL
    return out[0]


def bgr(width, height, stride=None, value=0):
    stride = stride or width * 3
    return ffi.new("uint8_t[]", bytes([value % 256]) * (stride * height)), stride


def push_bgr(src, width, height, stride=None, ts=-1, value=0):
    buf, stride = bgr(width, height, stride, value)
    return lib.sora_video_source_push_bgr(src, buf, width, height, stride, ts)


def push_i420(src, width, height, strides=None, ts=-1):
    cw, ch = (width + 1) // 2, (height + 1) // 2
    sy, su, sv = strides or (width, cw, cw)
    y = ffi.new("uint8_t[]", max(1, sy * height))
    u = ffi.new("uint8_t[]", max(1, su * ch))
    v = ffi.new("uint8_t[]", max(1, sv * ch))
    return lib.sora_video_source_push_i420(src, y, sy, u, su, v, sv, width, height, ts)


class Pump:
    """Pushes BGR frames (~30 fps) and 10 ms audio chunks from a thread until stopped."""

    def __init__(self, video=None, audio=None, width=160, height=120, channels=1) -> None:
        self.video, self.audio = video, audio
        self.width, self.height = width, height
        self.frame, self.stride = bgr(width, height)
        self.pcm = ffi.new("int16_t[]", 480 * channels)
        self.results = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop_event.is_set():
            with self.lock:
                if self.audio is not None:
                    self.results.append(lib.sora_audio_source_push(self.audio, self.pcm, 480, -1))
                if self.video is not None and i % 3 == 0:
                    self.frame[i % len(self.frame)] = i % 256
                    self.results.append(lib.sora_video_source_push_bgr(self.video, self.frame, self.width,
                                                                       self.height, self.stride, -1))
            i += 1
            time.sleep(0.01)

    def drop_video(self):
        """Stop pushing video (before its source is destroyed)."""
        with self.lock:
            self.video = None

    def drop_audio(self):
        with self.lock:
            self.audio = None

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def outbound(stats):
    return [s for s in stats if s.get("type") == "outbound-rtp" or s.get("gst-name") == "outbound-rtp"]


def inbound(stats):
    return [s for s in stats if s.get("type") == "inbound-rtp" or s.get("gst-name") == "inbound-rtp"]


def stats_of(peer):
    return json.loads(peer.stats())


def sending_pair(ctx, video=None, audio=None):
    """Offerer a (recvonly video + audio), answerer b sending `video` (VP8) and `audio` (Opus); connected."""
    a, b = ctx.peer("receiver"), ctx.peer("sender")
    expect(a.add_transceiver(b"video", RECVONLY, VP8_CAPS), OK, "video transceiver")
    expect(a.add_transceiver(b"audio", RECVONLY, OPUS_CAPS), OK, "audio transceiver")
    vp8 = codec_params(b"VP8", 96, 90000)
    opus = codec_params(b"OPUS", 111, 48000, 2)

    def attach():
        if video is not None:
            expect(lib.sora_peer_attach_video_source(b.ptr, video, 0, vp8[0]), OK, "attach VP8")
            expect(lib.sora_peer_set_direction(b.ptr, 0, SENDONLY), OK, "set_direction video")
        if audio is not None:
            expect(lib.sora_peer_attach_audio_source(b.ptr, audio, 1, opus[0]), OK, "attach OPUS")
            expect(lib.sora_peer_set_direction(b.ptr, 1, SENDONLY), OK, "set_direction audio")

    offer, answer = negotiate(a, b, attach)
    return a, b, offer, answer


def wait_bytes_sent(peer, n_streams, timeout=8.0):
    """Wait until `n_streams` outbound-rtp entries report bytes-sent > 0; returns the last stats."""
    last = []

    def check():
        last[:] = stats_of(peer)
        return len([s for s in outbound(last) if s.get("bytes-sent", 0) > 0]) >= n_streams

    wait_until(check, timeout, interval=0.25)
    return last


# ---- video sources -------------------------------------------------------------------


def test_video_source_create_destroy(ctx):
    src = video_source(ctx)
    assert lib.sora_video_source_frame_count(src) == 0
    expect(lib.sora_video_source_destroy(src), OK, "sora_video_source_destroy")


def test_push_bgr_without_peer_counts_frames(ctx):
    src = video_source(ctx)
    expect(push_bgr(src, 4, 2), OK, "push 4x2")
    expect(push_bgr(src, 4, 2, stride=16), OK, "push 4x2 with padded stride")
    expect(push_bgr(src, 1, 1), OK, "push 1x1")
    expect(push_bgr(src, 640, 480), OK, "push 640x480")
    for ts in (0, 1000, 2000, 33333):
        expect(push_bgr(src, 8, 8, ts=ts), OK, "push with timestamp %d" % ts)
    assert lib.sora_video_source_frame_count(src) == 8


@pytest.mark.parametrize("width,height,stride", [(0, 2, 12), (4, 0, 12), (-4, 2, 12), (4, -2, 12), (4, 2, 11),
                                                 (4, 2, 0), (4, 2, -12), (100000, 1, 300000)])
def test_push_bgr_bad_size_or_stride(ctx, width, height, stride):
    src = video_source(ctx)
    buf = ffi.new("uint8_t[]", 4096)
    expect(lib.sora_video_source_push_bgr(src, buf, width, height, stride, -1), INVALID_ARGUMENT,
           "push_bgr(%d, %d, stride %d)" % (width, height, stride))
    assert lib.sora_video_source_frame_count(src) == 0, "a refused frame was counted"


def test_push_bgr_null_data(ctx):
    src = video_source(ctx)
    expect(lib.sora_video_source_push_bgr(src, ffi.NULL, 2, 2, 6, -1), INVALID_ARGUMENT, "push_bgr(NULL)")
    assert lib.sora_video_source_frame_count(src) == 0


def test_push_i420_without_peer_counts_frames(ctx):
    src = video_source(ctx)
    expect(push_i420(src, 4, 4), OK, "i420 4x4")
    expect(push_i420(src, 3, 3), OK, "i420 3x3 (odd)")
    expect(push_i420(src, 4, 4, strides=(8, 4, 4)), OK, "i420 padded strides")
    expect(push_bgr(src, 4, 4), OK, "bgr after i420")
    assert lib.sora_video_source_frame_count(src) == 4


@pytest.mark.parametrize("width,height,strides", [(4, 4, (3, 2, 2)), (4, 4, (4, 1, 2)), (4, 4, (4, 2, 1)),
                                                  (0, 4, (4, 2, 2)), (4, 0, (4, 2, 2)), (-4, 4, (4, 2, 2)),
                                                  (5, 5, (5, 2, 3))])
def test_push_i420_bad_size_or_stride(ctx, width, height, strides):
    src = video_source(ctx)
    buf = ffi.new("uint8_t[]", 4096)
    sy, su, sv = strides
    expect(lib.sora_video_source_push_i420(src, buf, sy, buf, su, buf, sv, width, height, -1), INVALID_ARGUMENT,
           "push_i420(%dx%d, strides %r)" % (width, height, strides))
    assert lib.sora_video_source_frame_count(src) == 0


def test_push_i420_null_planes(ctx):
    src = video_source(ctx)
    buf = ffi.new("uint8_t[]", 64)
    for planes in ((ffi.NULL, buf, buf), (buf, ffi.NULL, buf), (buf, buf, ffi.NULL)):
        y, u, v = planes
        expect(lib.sora_video_source_push_i420(src, y, 2, u, 1, v, 1, 2, 2, -1), INVALID_ARGUMENT, "NULL plane")
    assert lib.sora_video_source_frame_count(src) == 0


def test_frame_count_from_many_threads(ctx):
    src = video_source(ctx)
    threads, per_thread = 4, 50
    rcs = []

    def worker():
        buf, stride = bgr(16, 16)
        for _ in range(per_thread):
            rcs.append(lib.sora_video_source_push_bgr(src, buf, 16, 16, stride, -1))

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(15)
    assert rcs.count(OK) == threads * per_thread
    assert lib.sora_video_source_frame_count(src) == threads * per_thread


# ---- audio sources ---------------------------------------------------------------------


@pytest.mark.parametrize("channels,rate", [(1, 48000), (2, 48000), (1, 16000), (2, 44100), (1, 8000)])
def test_audio_source_create_destroy(ctx, channels, rate):
    src = audio_source(ctx, channels, rate)
    pcm = ffi.new("int16_t[]", rate // 100 * channels)
    expect(lib.sora_audio_source_push(src, pcm, rate // 100, -1), OK, "push 10 ms without a peer")
    expect(lib.sora_audio_source_push(src, pcm, rate // 100, 10000), OK, "push with a timestamp")
    expect(lib.sora_audio_source_destroy(src), OK, "sora_audio_source_destroy")


@pytest.mark.parametrize("channels,rate", [(0, 48000), (-1, 48000), (1, 1000), (1, 0), (2, -48000), (1, -1)])
def test_audio_source_bad_format(ctx, channels, rate):
    out = ffi.new("sora_audio_source **")
    expect(lib.sora_audio_source_create(ctx.ptr, channels, rate, out), INVALID_ARGUMENT,
           "sora_audio_source_create(%d, %d)" % (channels, rate))


def test_audio_push_null_samples(ctx):
    src = audio_source(ctx)
    expect(lib.sora_audio_source_push(src, ffi.NULL, 480, -1), INVALID_ARGUMENT, "push(NULL, 480)")


# ---- attaching to a peer ------------------------------------------------------------------


def test_send_video_and_audio(ctx):
    video, audio = video_source(ctx), audio_source(ctx)
    a, b, offer, answer = sending_pair(ctx, video, audio)
    assert sdp_media_kinds(answer) == ["video", "audio"]
    pump = Pump(video, audio)
    try:
        stats = wait_bytes_sent(b, 2)
        sent = [s.get("bytes-sent", 0) for s in outbound(stats)]
        assert len([n for n in sent if n > 0]) >= 2, "outbound-rtp bytes-sent %r; stats %r" % (sent, stats)
        assert a.rec.wait_for(lambda evs: {e.str0 for e in evs if e.type == lib.SORA_EVENT_TRACK} >=
                              {"video", "audio"}), "the receiver did not get a video and an audio track"
        assert wait_until(lambda: any(s.get("bytes-received", 0) > 0 for s in inbound(stats_of(a))), 5), \
            "the receiver's inbound-rtp never counted bytes"
        expect(lib.sora_peer_request_key_frame(b.ptr), OK, "request key frame")
    finally:
        pump.stop()
    assert set(pump.results) == {OK}
    assert lib.sora_video_source_frame_count(video) > 0
    for e in a.rec.of_type(lib.SORA_EVENT_TRACK):
        assert e.i0 > 0 or e.i0 == 0
    ids = [e.i0 for e in a.rec.of_type(lib.SORA_EVENT_TRACK)]
    assert len(ids) == len(set(ids)), "track ids are not unique: %r" % ids
    assert not a.rec.of_type(lib.SORA_EVENT_ERROR) and not b.rec.of_type(lib.SORA_EVENT_ERROR), \
        [(e.str0, e.str1) for e in a.rec.of_type(lib.SORA_EVENT_ERROR) + b.rec.of_type(lib.SORA_EVENT_ERROR)]



def test_track_events_carry_their_own_mline_and_mid(ctx):
    video, audio = video_source(ctx), audio_source(ctx)
    a, b, offer, answer = sending_pair(ctx, video, audio)
    pump = Pump(video, audio)
    try:
        assert a.rec.wait_for(lambda evs: len([e for e in evs if e.type == lib.SORA_EVENT_TRACK]) >= 2), \
            "the receiver did not get two tracks"
    finally:
        pump.stop()
    kinds, mids = sdp_media_kinds(offer), sdp_mids(offer)
    for e in a.rec.of_type(lib.SORA_EVENT_TRACK):
        assert 0 <= e.i1 < len(kinds)
        assert kinds[e.i1] == e.str0, "a %s track reported m-line %d (%s)" % (e.str0, e.i1, kinds[e.i1])
        assert e.str1 == mids[e.i1], "a %s track reported mid %r, m-line %d has mid %r" % (
            e.str0, e.str1, e.i1, mids[e.i1])


@pytest.fixture
def answerer(ctx):
    """A peer that applied a remote offer with a video (m-line 0) and an audio (m-line 1) section."""
    a, b = ctx.peer("offerer"), ctx.peer("answerer")
    expect(a.add_transceiver(b"video", RECVONLY, VP8_CAPS), OK, "video transceiver")
    expect(a.add_transceiver(b"audio", RECVONLY, OPUS_CAPS), OK, "audio transceiver")
    b.set_remote("offer", a.create_offer())
    return b


@pytest.mark.parametrize("codec", [b"NOPE", b"", b"OPUS-ISH"])
def test_attach_unsupported_video_codec(ctx, answerer, codec):
    src = video_source(ctx)
    params = codec_params(codec, 96, 90000)
    rc = lib.sora_peer_attach_video_source(answerer.ptr, src, 0, params[0])
    if codec == b"":
        assert rc in (INVALID_ARGUMENT, UNSUPPORTED), "attach_video_source(codec '') returned %d" % rc
        assert last_error()
    else:
        expect(rc, UNSUPPORTED, "attach_video_source(%r)" % codec)


@pytest.mark.parametrize("codec", [b"NOPE", b"VP8", b"PCMU"])
def test_attach_unsupported_audio_codec(ctx, answerer, codec):
    src = audio_source(ctx)
    params = codec_params(codec, 111, 48000, 2)
    expect(lib.sora_peer_attach_audio_source(answerer.ptr, src, 1, params[0]), UNSUPPORTED,
           "attach_audio_source(%r)" % codec)


@pytest.mark.parametrize("mline,payload_type", [(-1, 96), (0, -1), (0, 128), (0, 1000)])
def test_attach_bad_params(ctx, answerer, mline, payload_type):
    video, audio = video_source(ctx), audio_source(ctx)
    vp8 = codec_params(b"VP8", payload_type, 90000)
    opus = codec_params(b"OPUS", payload_type if payload_type != 96 else 111, 48000, 2)
    expect(lib.sora_peer_attach_video_source(answerer.ptr, video, mline, vp8[0]), INVALID_ARGUMENT,
           "attach_video_source(mline %d, pt %d)" % (mline, payload_type))
    expect(lib.sora_peer_attach_audio_source(answerer.ptr, audio, mline if mline < 0 else 1, opus[0]),
           INVALID_ARGUMENT, "attach_audio_source(mline %d, pt %d)" % (mline, payload_type))


def test_destroy_sources_while_a_peer_sends_them(ctx):
    video, audio = video_source(ctx), audio_source(ctx)
    a, b, _, _ = sending_pair(ctx, video, audio)
    pump = Pump(video, audio)
    try:
        wait_bytes_sent(b, 2)
        pump.drop_video()
        expect(lib.sora_video_source_destroy(video), OK, "destroy the video source mid-stream")
        time.sleep(1.0)  # audio keeps flowing, video has no source any more
        assert b.connected() and a.connected(), "the connection dropped after destroying the video source"
        before = sum(s.get("bytes-sent", 0) for s in outbound(stats_of(b)))
        time.sleep(0.5)
        after = sum(s.get("bytes-sent", 0) for s in outbound(stats_of(b)))
        assert after >= before
        pump.drop_audio()
        expect(lib.sora_audio_source_destroy(audio), OK, "destroy the audio source mid-stream")
        time.sleep(0.5)
        assert b.connected()
        expect(lib.sora_peer_request_key_frame(b.ptr), OK, "request key frame without a source")
        json.loads(b.stats())
    finally:
        pump.stop()
    assert set(pump.results) <= {OK}
    b.destroy()
    assert b.rec.wait_destroyed()
    assert b.rec.destroy_count == 1


def test_pushes_continue_after_the_peer_is_destroyed(ctx):
    video, audio = video_source(ctx), audio_source(ctx)
    a, b, _, _ = sending_pair(ctx, video, audio)
    pump = Pump(video, audio)
    try:
        wait_bytes_sent(b, 1)
        b.destroy()
        assert b.rec.wait_destroyed()
        count = lib.sora_video_source_frame_count(video)
        time.sleep(0.5)
        assert lib.sora_video_source_frame_count(video) > count, "the source stopped counting frames"
    finally:
        pump.stop()
    assert set(pump.results) == {OK}, "pushes failed after the peer was destroyed: %r" % set(pump.results)


def test_format_and_size_changes_while_sending(ctx):
    video = video_source(ctx)
    a, b, _, _ = sending_pair(ctx, video, None)
    rcs = []
    deadline = time.monotonic() + 1.5
    i = 0
    while time.monotonic() < deadline:
        phase = i // 10 % 3
        if phase == 0:
            rcs.append(push_bgr(video, 160, 120, value=i))
        elif phase == 1:
            rcs.append(push_i420(video, 96, 64))
        else:
            rcs.append(push_bgr(video, 64, 48, stride=64 * 3 + 8, value=i))
        i += 1
        time.sleep(0.02)
    assert set(rcs) == {OK}
    assert lib.sora_video_source_frame_count(video) == len(rcs)
    stats = wait_bytes_sent(b, 1)
    assert any(s.get("bytes-sent", 0) > 0 for s in outbound(stats))
    assert b.connected()
    errors = [(e.str0, e.str1) for e in b.rec.of_type(lib.SORA_EVENT_ERROR)]
    assert not errors, "engine errors while the frame format changed: %r" % errors
