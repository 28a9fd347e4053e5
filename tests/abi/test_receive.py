"""Receive rules of sora_c.h: sinks and forwards on a remote track, and their handles outliving their peer.

A sink or forward keeps pointing at the peer it was made on. The peer may be destroyed (and its
on_destroy fire) before the sink or forward is, even at the same moment from another thread:
sora_sink_destroy / sora_forward_destroy must still succeed and never touch freed memory.
"""
from __future__ import annotations

import threading

from sora_sdk._ffi import EventRouter

from .conftest import OK, VP8_CAPS, expect, ffi, lib, wait_until
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
