"""sora_peer_track_rid, and forwards taking turns on one destination m-line (an SFU switching simulcast layers).

A receives one VP8 source from B as two simulcast layers (rid r0 at half size, r1 full size): each layer is a
remote track of A whose rid and SSRC sora_peer_track_rid reads from its first packets. A plain (non-simulcast)
track has an SSRC and no rid. Forwards of A's layers to C's m-line 0 in turn reach D as one RTP stream (the first
forward's SSRC) whose pictures change size, decodable throughout.
"""
from __future__ import annotations

from .conftest import (INVALID_ARGUMENT, INVALID_STATE, NOT_FOUND, OK, VP8_CAPS, codec_params, expect, ffi, lib,
                       negotiate, wait_until)
from .test_receive import Frames, make_sink, receiving
from .test_sources import Pump, stats_of, video_source

RECVONLY = lib.SORA_DIRECTION_RECVONLY
SENDONLY = lib.SORA_DIRECTION_SENDONLY
MID = b"urn:ietf:params:rtp-hdrext:sdes:mid"
RID = b"urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
SIMULCAST_CAPS = (VP8_CAPS + b",extmap-4=" + MID + b",extmap-10=" + RID + b",rid-r0=recv,rid-r1=recv"
                  + b',a-simulcast="recv r0;r1"')
SSRCS = {"r0": 0x1000A, "r1": 0x2000B}
W, H = 320, 240


def track_rid(peer, track_id: int):
    rid = ffi.new("char **")
    ssrc = ffi.new("uint32_t *")
    rc = lib.sora_peer_track_rid(peer.ptr, track_id, rid, ssrc)
    text = None
    if rid[0] != ffi.NULL:
        text = ffi.string(rid[0]).decode("ascii")
        lib.sora_c_free(rid[0])
    return rc, text, int(ssrc[0])


def simulcast_pair(ctx):
    """A (recvonly, offering rid r0/r1) and B sending a 320x240 source as two layers; connected, pumping."""
    video = video_source(ctx)
    a, b = ctx.peer("simulcast-receiver"), ctx.peer("simulcast-sender")
    expect(a.add_transceiver(b"video", RECVONLY, SIMULCAST_CAPS), OK, "simulcast transceiver")
    params = codec_params(b"VP8", 96, 90000)
    encodings = ffi.new("sora_simulcast_encoding[2]")
    names = [ffi.new("char[]", rid.encode()) for rid in SSRCS]
    for enc, name, ssrc in zip(encodings, names, SSRCS.values()):
        enc.rid = name
        enc.active = 1
        enc.ssrc = ssrc

    def attach():
        expect(lib.sora_peer_attach_video_simulcast(b.ptr, video, 0, params[0], encodings, 2), OK,
               "sora_peer_attach_video_simulcast")
        expect(lib.sora_peer_set_direction(b.ptr, 0, SENDONLY), OK, "set_direction")

    negotiate(a, b, attach)
    pump = Pump(video, width=W, height=H)
    assert a.rec.wait_for(lambda evs: len([e for e in evs if e.type == lib.SORA_EVENT_TRACK]) >= 2), \
        "A got %d tracks" % len(a.rec.of_type(lib.SORA_EVENT_TRACK))
    return a, b, pump


def layers_of(peer) -> dict:
    """rid -> (track id, SSRC) of the peer's remote tracks, once every one has its rid."""
    out = {}

    def read() -> bool:
        out.clear()
        for event in peer.rec.of_type(lib.SORA_EVENT_TRACK):
            rc, rid, ssrc = track_rid(peer, event.i0)
            assert rc == OK, rc
            if rid is None:
                return False
            out[rid] = (event.i0, ssrc)
        return True
    assert wait_until(read, 5), out
    return dict(out)


def test_each_simulcast_layer_track_has_its_rid_and_ssrc(ctx):
    a, b, pump = simulcast_pair(ctx)
    try:
        layers = layers_of(a)
        assert {rid: ssrc for rid, (_, ssrc) in layers.items()} == SSRCS
        assert len({track for track, _ in layers.values()}) == 2
    finally:
        pump.stop()


def test_plain_track_has_an_ssrc_and_no_rid(ctx):
    a, b, pump, track = receiving(ctx)
    try:
        assert wait_until(lambda: track_rid(a, track)[2] != 0, 5)
        rc, rid, ssrc = track_rid(a, track)
        assert rc == OK and rid is None
        sent = {s["ssrc"] for s in stats_of(b) if s.get("type") == "outbound-rtp" and s.get("kind") == "video"}
        assert ssrc in sent, (ssrc, sent)
        # ssrc_out is optional; rid_out is not; the track must exist; the peer must be open
        assert lib.sora_peer_track_rid(a.ptr, track, ffi.new("char **"), ffi.NULL) == OK
        expect(lib.sora_peer_track_rid(a.ptr, track, ffi.NULL, ffi.new("uint32_t *")), INVALID_ARGUMENT,
               "rid_out NULL")
        expect(lib.sora_peer_track_rid(a.ptr, track + 1000, ffi.new("char **"), ffi.NULL), NOT_FOUND,
               "unknown track")
    finally:
        pump.stop()
    expect(lib.sora_peer_close(a.ptr), OK, "sora_peer_close")
    expect(lib.sora_peer_track_rid(a.ptr, track, ffi.new("char **"), ffi.NULL), INVALID_STATE, "closed peer")


def test_forwards_taking_turns_on_an_m_line_keep_one_stream(ctx):
    a, b, pump = simulcast_pair(ctx)
    forwards = []
    try:
        layers = layers_of(a)
        c, d = ctx.peer("forward-destination"), ctx.peer("end-receiver")
        expect(c.add_transceiver(b"video", SENDONLY, VP8_CAPS), OK, "destination transceiver")
        negotiate(c, d)
        out = ffi.new("sora_forward **")
        expect(lib.sora_forward_create(a.ptr, layers["r0"][0], c.ptr, 0, 96, out), OK, "forward r0")
        forwards.append(out[0])
        assert d.rec.wait_for(lambda evs: any(e.type == lib.SORA_EVENT_TRACK for e in evs)), "D got no track"
        track = d.rec.of_type(lib.SORA_EVENT_TRACK)[0].i0
        frames = Frames()
        sink = make_sink(d, track, frames)
        # a layer's size is aligned down to 16 pixels, as libwebrtc aligns simulcast layers: 160x120 -> 160x112
        half = (W // 2 // 16 * 16, H // 2 // 16 * 16)
        assert wait_until(lambda: half in {(w, h) for w, h, _ in frames.sizes}, 10), frames.sizes
        # the m-line changes hands: r0's forward stops, r1's starts on the same m-line
        expect(lib.sora_forward_destroy(forwards.pop()), OK, "stop r0")
        expect(lib.sora_forward_create(a.ptr, layers["r1"][0], c.ptr, 0, 96, out), OK, "forward r1")
        forwards.append(out[0])
        assert wait_until(lambda: (W, H) in {(w, h) for w, h, _ in frames.sizes}, 10), frames.sizes
        before = frames.count
        assert wait_until(lambda: frames.count >= before + 5, 5), "decoding stopped after the switch"
        # one track and one RTP stream at D, with the first forward's SSRC
        assert len(d.rec.of_type(lib.SORA_EVENT_TRACK)) == 1
        inbound = [s for s in stats_of(d) if s.get("type") == "inbound-rtp"]
        assert [s["ssrc"] for s in inbound] == [SSRCS["r0"]], inbound
        # a forward cannot take an m-line that another one feeds
        assert lib.sora_forward_create(a.ptr, layers["r0"][0], c.ptr, 0, 96, out) != OK
        expect(lib.sora_sink_destroy(sink), OK, "sora_sink_destroy")
    finally:
        pump.stop()
        for forward in forwards:
            lib.sora_forward_destroy(forward)
