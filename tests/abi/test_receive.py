"""Receive rules of sora_c.h: sinks and forwards on a remote track, and their handles outliving their peer.

A sink or forward keeps pointing at the peer it was made on. The peer may be destroyed (and its
on_destroy fire) before the sink or forward is, even at the same moment from another thread:
sora_sink_destroy / sora_forward_destroy must still succeed and never touch freed memory.
"""
from __future__ import annotations

import threading

from sora_sdk._ffi import EventRouter

from .conftest import OK, VP8_CAPS, codec_params, expect, ffi, lib, negotiate, wait_until
from .test_sources import Pump, sending_pair, video_source

SENDONLY = lib.SORA_DIRECTION_SENDONLY


class Frames:
    """Callbacks of one sink: counts frames (releasing each), notes on_destroy and late frames."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.sizes = set()
        self.destroyed = threading.Event()
        self.after_destroy = 0
        self.router = EventRouter(self._on_event, self._on_destroy)

    def _on_event(self, event) -> None:
        with self.lock:
            if event.type == lib.SORA_EVENT_VIDEO_FRAME:
                self.count += 1
                self.sizes.add((event.i0, event.i1, event.size))
            if self.destroyed.is_set():
                self.after_destroy += 1
        if event.ref != ffi.NULL:
            lib.sora_c_release(event.ref)

    def _on_destroy(self) -> None:
        self.destroyed.set()


def make_sink(peer, track_id: int, frames: Frames):
    cfg = ffi.new("sora_sink_config *")
    cfg.format = lib.SORA_SINK_VIDEO_I420
    out = ffi.new("sora_sink **")
    expect(lib.sora_sink_create(peer.ptr, track_id, cfg, frames.router.callbacks, out), OK, "sora_sink_create")
    assert out[0] != ffi.NULL
    return out[0]


def receiving(ctx):
    """A connected pair sending VP8 160x120 from a pump; returns (receiver, sender, pump, video track id)."""
    video = video_source(ctx)
    a, b, _offer, _answer = sending_pair(ctx, video)
    pump = Pump(video)
    assert a.rec.wait_for(lambda evs: any(e.type == lib.SORA_EVENT_TRACK and e.str0 == "video" for e in evs)), \
        "the receiver got no video track"
    track = next(e.i0 for e in a.rec.of_type(lib.SORA_EVENT_TRACK) if e.str0 == "video")
    return a, b, pump, track


def test_sink_decodes_frames_of_the_remote_track(ctx):
    a, b, pump, track = receiving(ctx)
    frames = Frames()
    sink = make_sink(a, track, frames)
    try:
        assert wait_until(lambda: frames.count >= 5, 10), "the sink decoded %d frames" % frames.count
        assert {(w, h) for w, h, _ in frames.sizes} == {(160, 120)}
        assert all(size == 160 * 120 * 3 // 2 for _, _, size in frames.sizes), frames.sizes
    finally:
        pump.stop()
    expect(lib.sora_sink_destroy(sink), OK, "sora_sink_destroy")
    assert frames.destroyed.wait(5), "the sink's on_destroy never ran"
    assert frames.after_destroy == 0


def test_sink_destroyed_after_its_peer_was_freed(ctx):
    a, b, pump, track = receiving(ctx)
    frames = Frames()
    sink = make_sink(a, track, frames)
    try:
        assert wait_until(lambda: frames.count >= 2, 10), "the sink decoded %d frames" % frames.count
        a.destroy()
        assert a.rec.wait_destroyed(), "the peer's on_destroy never ran"
    finally:
        pump.stop()
    expect(lib.sora_sink_destroy(sink), OK, "sora_sink_destroy after the peer was destroyed")
    assert frames.destroyed.wait(5), "the sink's on_destroy never ran"
    assert frames.after_destroy == 0


def test_forward_destroyed_after_its_source_peer_was_freed(ctx):
    a, b, pump, track = receiving(ctx)
    c = ctx.peer("forward-destination")
    expect(c.add_transceiver(b"video", SENDONLY, VP8_CAPS), OK, "destination transceiver")
    out = ffi.new("sora_forward **")
    try:
        expect(lib.sora_forward_create(a.ptr, track, c.ptr, 0, 96, out), OK, "sora_forward_create")
        a.destroy()
        assert a.rec.wait_destroyed(), "the source peer's on_destroy never ran"
    finally:
        pump.stop()
    expect(lib.sora_forward_destroy(out[0]), OK, "sora_forward_destroy after the source peer was destroyed")


def test_sink_and_peer_destroyed_at_the_same_time(ctx):
    """The peer is closed on one thread while its sink is destroyed on another (as a finalizer may)."""
    for round_ in range(3):
        a, b, pump, track = receiving(ctx)
        frames = Frames()
        sink = make_sink(a, track, frames)
        results = {}
        start = threading.Barrier(2)

        def destroy_peer():
            start.wait(5)
            a.destroy_called = True
            results["peer"] = lib.sora_peer_destroy(a.ptr)

        def destroy_sink():
            start.wait(5)
            results["sink"] = lib.sora_sink_destroy(sink)

        try:
            wait_until(lambda: frames.count >= 1, 10)
            threads = [threading.Thread(target=destroy_peer), threading.Thread(target=destroy_sink)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert not any(t.is_alive() for t in threads), "round %d: a destroy call hangs" % round_
        finally:
            pump.stop()
        assert results == {"peer": OK, "sink": OK}, "round %d: %r" % (round_, results)
        assert frames.destroyed.wait(5) and a.rec.wait_destroyed(), "round %d: on_destroy missing" % round_
        b.destroy()


# ---- encoded-frame transforms ------------------------------------------------------------


class Transform:
    """A sora_transform whose callback appends or strips a trailer and gives every frame back at once."""

    def __init__(self, ctx, trailer: bytes = b"", strip: bytes = b"") -> None:
        self.trailer, self.strip = trailer, strip
        self.lock = threading.Lock()
        self.frames = []  # (info fields, size, threads)
        self.results = []
        self.threads = set()
        self.destroyed = threading.Event()
        self.router = EventRouter(self._on_event, self.destroyed.set)
        out = ffi.new("sora_transform **")
        expect(lib.sora_transform_create(ctx.ptr, self.router.callbacks, out), OK, "sora_transform_create")
        self.ptr = out[0]

    def _on_event(self, event) -> None:
        info = ffi.new("sora_encoded_frame_info *")
        rc_info = lib.sora_transform_frame_info(event.ref, info)
        data = ffi.buffer(event.ptr, event.size)[:]
        if self.strip and data.endswith(self.strip):
            new = data[:-len(self.strip)]
        else:
            new = data + self.trailer if self.trailer else None
        if new is None:
            rc = lib.sora_transform_enqueue(self.ptr, event.ref, ffi.NULL, 0, info.rtp_timestamp)
        else:
            rc = lib.sora_transform_enqueue(self.ptr, event.ref, new, len(new), info.rtp_timestamp)
        with self.lock:
            self.threads.add(threading.get_ident())
            self.results.append((rc_info, rc))
            self.frames.append({"type": event.type, "direction": info.direction, "key": info.key_frame,
                                "pt": info.payload_type, "ssrc": info.ssrc, "clock": info.clock_rate,
                                "width": info.width, "height": info.height, "size": event.size,
                                "mime": ffi.string(info.mime_type).decode(), "ends": data.endswith(self.strip)
                                if self.strip else None, "event_key": event.i0, "event_dir": event.i1})

    def count(self) -> int:
        with self.lock:
            return len(self.frames)


def transformed_pair(ctx, send: Transform):
    """A connected pair whose sender's VP8 branch goes through `send`; returns (receiver, sender, pump)."""
    video = video_source(ctx)
    a, b = ctx.peer("receiver"), ctx.peer("sender")
    expect(a.add_transceiver(b"video", lib.SORA_DIRECTION_RECVONLY, VP8_CAPS), OK, "video transceiver")
    vp8 = codec_params(b"VP8", 96, 90000)

    def attach():
        expect(lib.sora_peer_set_send_transform(b.ptr, 0, send.ptr), OK, "set send transform")
        expect(lib.sora_peer_attach_video_source(b.ptr, video, 0, vp8[0]), OK, "attach VP8")
        expect(lib.sora_peer_set_direction(b.ptr, 0, SENDONLY), OK, "set_direction")

    negotiate(a, b, attach)
    return a, b, Pump(video)


def test_transforms_change_frames_between_encoder_and_decoder(ctx):
    """A send transform appends 8 bytes to every VP8 frame; a receive transform finds and strips them; the sink
    still decodes every frame at its size."""
    trailer = b"TRAILER!"
    send = Transform(ctx, trailer=trailer)
    recv = Transform(ctx, strip=trailer)
    a, b, pump = transformed_pair(ctx, send)
    try:
        assert a.rec.wait_for(lambda evs: any(e.type == lib.SORA_EVENT_TRACK for e in evs)), "no track"
        track = a.rec.of_type(lib.SORA_EVENT_TRACK)[0].i0
        expect(lib.sora_peer_set_track_transform(a.ptr, track, recv.ptr), OK, "set track transform")
        expect(lib.sora_peer_set_track_transform(a.ptr, track + 1000, recv.ptr), lib.SORA_ERR_NOT_FOUND, "unknown")
        frames = Frames()
        sink = make_sink(a, track, frames)
        assert wait_until(lambda: frames.count >= 10 and recv.count() >= 10, 10), (frames.count, recv.count())
    finally:
        pump.stop()
    expect(lib.sora_sink_destroy(sink), OK, "sink destroy")
    assert {(w, h) for w, h, _ in frames.sizes} == {(160, 120)}
    assert set(send.results) == {(OK, OK)} and set(recv.results) == {(OK, OK)}, (send.results, recv.results)
    first = send.frames[0]
    assert (first["direction"], first["key"], first["pt"], first["clock"], first["mime"]) == \
        (lib.SORA_TRANSFORM_SENDER, 1, 96, 90000, "video/VP8")
    assert (first["width"], first["height"]) == (160, 120) and first["ssrc"] != 0
    assert (first["type"], first["event_key"], first["event_dir"]) == (lib.SORA_EVENT_ENCODED_FRAME, 1,
                                                                       lib.SORA_TRANSFORM_SENDER)
    assert all(f["direction"] == lib.SORA_TRANSFORM_RECEIVER and f["mime"] == "video/VP8" for f in recv.frames)
    assert all(f["ends"] for f in recv.frames), "a received frame lacked the sender's trailer"
    main = threading.get_ident()
    assert main not in send.threads and len(send.threads) == 1 and len(recv.threads) == 1
    for t in (send, recv):
        expect(lib.sora_transform_destroy(t.ptr), OK, "transform destroy")
        assert t.destroyed.wait(5), "the transform's on_destroy never ran"
        expect(lib.sora_transform_destroy(t.ptr), lib.SORA_ERR_INVALID_STATE, "second destroy")


def test_short_circuited_transform_passes_frames_without_events(ctx):
    send = Transform(ctx, trailer=b"X")
    expect(lib.sora_transform_short_circuit(send.ptr), OK, "short circuit")
    a, b, pump = transformed_pair(ctx, send)
    try:
        assert a.rec.wait_for(lambda evs: any(e.type == lib.SORA_EVENT_TRACK for e in evs)), "no track"
        frames = Frames()
        sink = make_sink(a, a.rec.of_type(lib.SORA_EVENT_TRACK)[0].i0, frames)
        assert wait_until(lambda: frames.count >= 5, 10), frames.count
    finally:
        pump.stop()
    expect(lib.sora_sink_destroy(sink), OK, "sink destroy")
    assert send.count() == 0
    assert lib.sora_transform_dropped(send.ptr) == 0


def test_transform_left_to_the_context_is_destroyed_with_it():
    from .conftest import Context

    c = Context()
    t = Transform(c)
    c.destroy()
    assert t.destroyed.wait(5), "context destroy did not destroy the transform"


# ---- ownership (sora_c.h "Ownership"): sinks outlive their context, callbacks may stop anything ----------------

def test_sink_destroyed_after_its_context(ctx):
    """A sink is its owner's to destroy even after sora_context_destroy: the call succeeds and on_destroy runs
    exactly once, with no frame after it."""
    a, b, pump, track = receiving(ctx)
    frames = Frames()
    sink = make_sink(a, track, frames)
    assert wait_until(lambda: frames.count >= 2, 10)
    pump.stop()
    for p in ctx.peers:
        p.remote = None
    ctx.destroy()
    assert not frames.destroyed.is_set(), "on_destroy ran before the owner destroyed the sink"
    expect(lib.sora_sink_destroy(sink), OK, "sora_sink_destroy after sora_context_destroy")
    assert frames.destroyed.wait(5), "the sink's on_destroy never ran"
    assert frames.after_destroy == 0


def test_context_destroyed_while_a_frame_callback_blocks(ctx):
    """sora_context_destroy while a sink callback is blocked in another thread: the context goes, the callback's
    frame stays valid, and the sink (destroyed later) gets on_destroy only after the callback returned."""
    a, b, pump, track = receiving(ctx)
    inside, release, returned = threading.Event(), threading.Event(), threading.Event()
    order = []

    def on_event(event) -> None:
        if event.type == lib.SORA_EVENT_VIDEO_FRAME and not inside.is_set():
            inside.set()
            release.wait(30)
            assert len(bytes(ffi.buffer(event.ptr, event.size))) == event.size  # the frame is still mapped
            order.append("callback returned")
            returned.set()
        if event.ref != ffi.NULL:
            lib.sora_c_release(event.ref)

    router = EventRouter(on_event, lambda: order.append("on_destroy"))
    cfg = ffi.new("sora_sink_config *")
    cfg.format = lib.SORA_SINK_VIDEO_BGR
    out = ffi.new("sora_sink **")
    expect(lib.sora_sink_create(a.ptr, track, cfg, router.callbacks, out), OK, "sora_sink_create")
    assert inside.wait(10)
    pump.stop()
    for p in ctx.peers:
        p.remote = None
    ctx.destroy()
    # from another thread the destroy waits (bounded) for the callback, which is still blocked: it returns anyway
    done = threading.Event()
    threading.Thread(target=lambda: (lib.sora_sink_destroy(out[0]), done.set()), daemon=True).start()
    assert done.wait(15), "sora_sink_destroy waited for a blocked callback without a bound"
    assert order == [], order
    release.set()
    assert returned.wait(5)
    assert wait_until(lambda: order == ["callback returned", "on_destroy"], 5), order


def test_sink_destroyed_inside_its_own_frame_callback(ctx):
    a, b, pump, track = receiving(ctx)
    frames = Frames()
    holder = {}

    def on_event(event) -> None:
        frames._on_event(event)
        if frames.count == 3:
            holder["rc"] = lib.sora_sink_destroy(holder["sink"])

    router = EventRouter(on_event, frames._on_destroy)
    frames.router = router
    cfg = ffi.new("sora_sink_config *")
    cfg.format = lib.SORA_SINK_VIDEO_I420
    out = ffi.new("sora_sink **")
    expect(lib.sora_sink_create(a.ptr, track, cfg, router.callbacks, out), OK, "sora_sink_create")
    holder["sink"] = out[0]
    try:
        assert frames.destroyed.wait(10), "on_destroy never ran after a destroy inside the callback"
    finally:
        pump.stop()
    assert holder["rc"] == OK
    assert frames.count == 3 and frames.after_destroy == 0
