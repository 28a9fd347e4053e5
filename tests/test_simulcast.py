"""Simulcast sending (signaling.md §11, engine.md §3): one video source, several encoded layers on one m-line.

Raw peer level: an offerer webrtcbin with a recvonly video transceiver offering rid r0..r2 recv (as a Sora
sending client gets it) and the answerer's `attach_video_simulcast`; the answer must announce the layers and the
offerer must receive one SSRC per active layer and decode each at its size. SDK level: a scripted offer with
`"simulcast": true` and `"encodings"` must produce the same answer and per-rid outbound-rtp stats.
Every wait is bounded; the engine runs over loopback only.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

from sora_sdk._ffi import check, ffi, lib
from sora_sdk.context import Context
from sora_sdk.errors import SoraInvalidArgument, SoraInvalidState, SoraUnsupported
from sora_sdk.media.sink import EngineSink
from sora_sdk.peer import Peer, plan_simulcast
from sora_sdk import sdp as sdp_parser
from sora_sdk.stats import simulcast_layer_size

from scripted_server import (OPUS_CAPS, answer, expect, hang_guard, make_client, make_server,  # noqa: F401
                             notify_created, reoffer, server_context, sora, wait_event)

pytestmark = pytest.mark.usefixtures("hang_guard")

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
WIDTH, HEIGHT = 640, 360

# (width, height) of the source -> rid -> the size libwebrtc encodes, for the encodings of
# LAYER_ENCODINGS (r0 scaleResolutionDownBy 4, r1 scaleResolutionDownTo
# 640x360, r2 full), measured with the official SDK 2025.4.0's VP8 sender there.
LAYER_ENCODINGS = [{"rid": "r0", "active": True, "scaleResolutionDownBy": 4.0, "maxBitrate": 150000},
                   {"rid": "r1", "active": True, "scaleResolutionDownTo": {"maxWidth": 640, "maxHeight": 360},
                    "maxBitrate": 400000},
                   {"rid": "r2", "active": True, "scaleResolutionDownBy": 1.0, "maxBitrate": 1000000}]
LIBWEBRTC_LAYER_SIZES = {(960, 540): {"r0": (240, 128), "r1": (480, 256), "r2": (960, 528)},
                         (1280, 720): {"r0": (320, 176), "r1": (640, 352), "r2": (1280, 720)}}


def simulcast_caps(rids=("r0", "r1", "r2"), paused=(), mid_id: Optional[int] = 4, rid_id: Optional[int] = 10,
                   codec: str = "VP8", pt: int = 96) -> str:
    """Caps for a recvonly transceiver that offers `a=rid:X recv` and `a=simulcast:recv ...` (engine.md loop mode)."""
    caps = "application/x-rtp,media=video,encoding-name=%s,payload=%d,clock-rate=90000" % (codec, pt)
    if mid_id:
        caps += ",extmap-%d=%s" % (mid_id, MID_URI)
    if rid_id:
        caps += ",extmap-%d=%s" % (rid_id, RID_URI)
    caps += "".join(",rid-%s=recv" % r for r in rids)
    caps += ',a-simulcast="recv %s"' % ";".join(("~" if r in paused else "") + r for r in rids)
    return caps


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class Loop:
    """Offerer A (recvonly simulcast, decodes what arrives) and answerer B (sends a video source as simulcast)."""

    def __init__(self, caps: str, sink_on_track: bool = True) -> None:
        self.ctx = Context()
        self.lock = threading.Lock()
        self.tracks: List[int] = []
        self.sizes: Dict[int, List[Tuple[int, int]]] = {}
        self.sinks: List[EngineSink] = []
        self.errors: List[str] = []
        self.sink_on_track = sink_on_track
        peers: List[Peer] = []
        self.a = Peer(self.ctx, on_event=lambda ev: self._on_a(ev, peers))
        self.b = Peer(self.ctx, on_event=lambda ev: self._on_b(ev, peers))
        peers.extend([self.a, self.b])
        out = ffi.new("sora_video_source **")
        check(lib.sora_video_source_create(self.ctx.ptr, out))
        self.source = out[0]
        self.a.add_transceiver("video", "recvonly", caps)
        self.offer = self.a.create_offer()
        self.b.set_remote_description("offer", self.offer)
        self._stop = threading.Event()
        self._pump: Optional[threading.Thread] = None

    def _on_a(self, ev, peers) -> None:
        if ev.name == "ice-candidate":
            peers[1].add_ice_candidate(ev.i0, ev.str0)
        elif ev.name == "track":
            with self.lock:
                self.tracks.append(ev.i0)
            if self.sink_on_track:
                self.add_sink(ev.i0)
        elif ev.name == "error":
            self.errors.append(ev.str0)

    def _on_b(self, ev, peers) -> None:
        if ev.name == "ice-candidate":
            peers[0].add_ice_candidate(ev.i0, ev.str0)
        elif ev.name == "error":
            self.errors.append(ev.str0)

    def add_sink(self, track_id: int) -> None:
        def on_frame(e, tid=track_id) -> None:
            with self.lock:
                self.sizes.setdefault(tid, []).append((e.i0, e.i1))
            lib.sora_c_release(e.ref)
        self.sinks.append(EngineSink(self.ctx, self.a, track_id, lib.SORA_SINK_VIDEO_I420, on_frame))

    def negotiate(self, layers_or_encodings, **kwargs) -> str:
        extmaps = sdp_parser.parse(self.offer)[0].extmaps
        self.layers = self.b.attach_video_simulcast(self.source, 0, kwargs.pop("codec", "VP8"),
                                                    kwargs.pop("pt", 96), layers_or_encodings,
                                                    kwargs.pop("bitrate_kbps", 600), extmaps=extmaps, **kwargs)
        self.b.set_direction(0, "sendonly")
        self.answer = self.b.create_answer()
        self.a.set_remote_description("answer", self.answer)
        return self.answer

    def start(self, width: int = WIDTH, height: int = HEIGHT, fps: int = 30) -> None:
        def run() -> None:
            frame = np.zeros((height, width, 3), np.uint8)
            i = 0
            while not self._stop.is_set():
                frame[:] = (i * 5) % 256
                frame[height // 4: height // 2, (i * 7) % (width - 40):(i * 7) % (width - 40) + 40] = 255
                check(lib.sora_video_source_push_bgr(self.source, ffi.from_buffer(frame), width, height,
                                                     width * 3, -1))
                i += 1
                time.sleep(1.0 / fps)
        self._pump = threading.Thread(target=run, name="simulcast-pump", daemon=True)
        self._pump.start()

    def frame_sizes(self) -> Dict[int, set]:
        with self.lock:
            return {tid: set(v) for tid, v in self.sizes.items()}

    def wait_layers(self, expected: set, timeout: float = 12.0, frames: int = 10) -> bool:
        def done() -> bool:
            with self.lock:
                last = {v[-1] for v in self.sizes.values() if len(v) >= frames}
            return last == expected
        return _wait(done, timeout)

    def close(self) -> None:
        self._stop.set()
        if self._pump is not None:
            self._pump.join(2)
        for s in self.sinks:
            s.close()
        self.a.close()
        self.b.close()
        lib.sora_video_source_destroy(self.source)
        self.ctx.close()


@pytest.fixture
def loops():
    made: List[Loop] = []

    def make(caps: str, **kwargs) -> Loop:
        loop = Loop(caps, **kwargs)
        made.append(loop)
        return loop
    yield make
    for loop in made:
        loop.close()


def _lines(sdp: str) -> List[str]:
    return [line.strip() for line in sdp.splitlines()]


# --------------------------------------------------------------------------- raw peers

def test_three_layers_are_announced_sent_and_decoded_at_their_sizes(loops):
    loop = loops(simulcast_caps())
    answer_sdp = loop.negotiate([{"rid": "r0"}, {"rid": "r1"}, {"rid": "r2"}])
    lines = _lines(answer_sdp)
    for rid in ("r0", "r1", "r2"):
        assert "a=rid:%s send" % rid in lines
    assert "a=simulcast:send r0;r1;r2" in lines
    assert "a=sendonly" in lines
    # the extmaps are the offer's ids
    assert "a=extmap:4 %s" % MID_URI in lines and "a=extmap:10 %s" % RID_URI in lines
    loop.start()
    expected = {(160, 80), (320, 176), (640, 352)}  # libwebrtc's: 16-aligned (640x360 encodes 640x352)
    assert loop.wait_layers(expected), (loop.frame_sizes(), loop.errors)
    assert len(loop.tracks) == 3
    inbound = {s["ssrc"] for s in loop.a.get_stats() if s.get("type") == "inbound-rtp"}
    assert inbound == {layer["ssrc"] for layer in loop.layers}
    # the sender's stats name each layer
    outbound = {s["ssrc"]: s for s in loop.b.get_stats() if s.get("type") == "outbound-rtp"}
    assert {s["sora-simulcast"]["rid"] for s in outbound.values()} == {"r0", "r1", "r2"}
    assert all(s["packets-sent"] > 0 for s in outbound.values())


def test_paused_layer_is_announced_with_tilde_and_not_sent(loops):
    loop = loops(simulcast_caps())
    answer_sdp = loop.negotiate([{"rid": "r0", "active": True, "scaleResolutionDownBy": 4},
                                 {"rid": "r1", "scaleResolutionDownBy": 2}, {"rid": "r2", "active": False}])
    lines = _lines(answer_sdp)
    assert [l for l in lines if l.startswith("a=rid:")] == ["a=rid:r0 send", "a=rid:r1 send", "a=rid:r2 send"]
    assert "a=simulcast:send r0;r1;~r2" in lines
    loop.start()
    assert loop.wait_layers({(160, 80), (320, 176)}), (loop.frame_sizes(), loop.errors)
    time.sleep(0.5)
    assert len(loop.tracks) == 2
    inbound = {s["ssrc"] for s in loop.a.get_stats() if s.get("type") == "inbound-rtp"}
    paused = [layer for layer in loop.layers if layer["rid"] == "r2"][0]
    assert paused["ssrc"] not in inbound and len(inbound) == 2
    # the paused layer is still listed (zero counts), as libwebrtc lists every encoding
    outbound = {s["sora-simulcast"]["rid"]: s for s in loop.b.get_stats() if s.get("type") == "outbound-rtp"}
    assert sorted(outbound) == ["r0", "r1", "r2"]
    assert outbound["r2"]["packets-sent"] == 0 and outbound["r2"]["sora-simulcast"]["active"] is False


def test_scale_down_to_scale_by_and_max_framerate_follow_the_encodings(loops):
    loop = loops(simulcast_caps())
    encodings = [{"rid": "r0", "scaleResolutionDownBy": 3.0, "maxFramerate": 10},
                 {"rid": "r1", "scaleResolutionDownTo": {"maxWidth": 400, "maxHeight": 400}},
                 {"rid": "r2", "scaleResolutionDownBy": 1, "maxBitrate": 800000}]
    loop.negotiate(encodings)
    expected = {simulcast_layer_size(WIDTH, HEIGHT, layer) for layer in loop.layers}
    # libwebrtc's sizes (aligned to 16; the square request crops in libwebrtc, squeezes here)
    assert expected == {(208, 112), (352, 352), (640, 352)}
    loop.start()
    assert loop.wait_layers(expected), (loop.frame_sizes(), loop.errors)
    with loop.lock:
        before = {v[-1]: len(v) for v in loop.sizes.values()}
    time.sleep(2.0)
    with loop.lock:
        counts = {v[-1]: len(v) - before[v[-1]] for v in loop.sizes.values()}
    # r0 is capped at 10 fps, the others run at the source's 30 fps
    assert 10 <= counts[(208, 112)] <= 24 and counts[(640, 352)] >= 40, counts


@pytest.mark.parametrize("size", sorted(LIBWEBRTC_LAYER_SIZES))
def test_layer_sizes_are_libwebrtcs(loops, size):
    """The engine encodes each layer at the size libwebrtc does (measured with the official sender)."""
    loop = loops(simulcast_caps())
    loop.negotiate([dict(e) for e in LAYER_ENCODINGS])
    by_rid = {layer["rid"]: simulcast_layer_size(size[0], size[1], layer) for layer in loop.layers}
    assert by_rid == LIBWEBRTC_LAYER_SIZES[size]
    loop.start(*size)
    assert loop.wait_layers(set(by_rid.values())), (loop.frame_sizes(), loop.errors)


def test_key_frame_requests_reach_every_layer(loops):
    """Decoders attached long after the first key frames only start through PLI, routed per SSRC to each layer."""
    loop = loops(simulcast_caps(), sink_on_track=False)
    loop.negotiate([{"rid": "r0"}, {"rid": "r1"}, {"rid": "r2"}])
    loop.start()
    assert _wait(lambda: len(loop.tracks) == 3, 10), loop.tracks
    time.sleep(1.0)  # the layers' first key frames are long gone (key frames are otherwise ~100 s apart)
    for track in list(loop.tracks):
        loop.add_sink(track)
    assert loop.wait_layers({(160, 80), (320, 176), (640, 352)}, frames=3), (loop.frame_sizes(), loop.errors)
    loop.b.request_key_frame()  # the application's request reaches every layer's encoder without error


def test_resize_of_the_source_resizes_every_layer(loops):
    loop = loops(simulcast_caps(rids=("r0", "r1")))
    loop.negotiate([{"rid": "r0"}, {"rid": "r1"}])
    loop.start(320, 240)
    assert loop.wait_layers({(160, 112), (320, 240)}), loop.frame_sizes()
    loop._stop.set()
    loop._pump.join(2)
    loop._stop.clear()
    loop.start(640, 480)
    assert loop.wait_layers({(320, 240), (640, 480)}), loop.frame_sizes()


@pytest.mark.parametrize("codec,pt,fmtp", [
    ("VP9", 98, ""), ("H264", 102, ",packetization-mode=(string)1,profile-level-id=(string)42e01f"),
    ("AV1", 45, "")])
def test_vp9_h264_and_av1_layers(loops, codec, pt, fmtp):
    loop = loops(simulcast_caps(codec=codec, pt=pt).replace("clock-rate=90000", "clock-rate=90000" + fmtp))
    answer_sdp = loop.negotiate([{"rid": "r0"}, {"rid": "r1"}, {"rid": "r2", "active": False}], codec=codec, pt=pt)
    lines = _lines(answer_sdp)
    assert "a=rtpmap:%d %s/90000" % (pt, codec) in lines and "a=simulcast:send r0;r1;~r2" in lines
    loop.start()
    assert loop.wait_layers({(160, 80), (320, 176)}), (loop.frame_sizes(), loop.errors)


def test_bad_arguments_are_refused(loops):
    loop = loops(simulcast_caps())
    extmaps = sdp_parser.parse(loop.offer)[0].extmaps
    with pytest.raises(SoraInvalidArgument):
        loop.b.attach_video_simulcast(loop.source, 0, "VP8", 96, [{"rid": "r0"}, {"rid": "r0"}], extmaps=extmaps)
    with pytest.raises(SoraInvalidArgument):
        loop.b.attach_video_simulcast(loop.source, 0, "VP8", 96, [{"rid": "r 0"}], extmaps=extmaps)
    with pytest.raises(SoraInvalidArgument):
        loop.b.attach_video_simulcast(loop.source, 0, "VP8", 96, [{"active": True}], extmaps=extmaps)
    with pytest.raises(SoraInvalidArgument):
        loop.b.attach_video_simulcast(loop.source, 0, "VP8", 96, [{"rid": "r0", "scaleResolutionDownBy": 0.5}])
    with pytest.raises(SoraInvalidArgument):
        loop.b.attach_video_simulcast(loop.source, 0, "VP8", 96, [])
    with pytest.raises(SoraUnsupported):
        loop.b.attach_video_simulcast(loop.source, 0, "H265", 96, [{"rid": "r0"}], extmaps=extmaps)
    # C-level checks the Python layer does not make
    params = ffi.new("sora_codec_params *")
    vp8 = ffi.new("char[]", b"VP8")
    params.codec = vp8
    params.payload_type = 96
    encs = ffi.new("sora_simulcast_encoding[1]")
    assert lib.sora_peer_attach_video_simulcast(loop.b._ptr, loop.source, 0, params, ffi.NULL, 1) == \
        lib.SORA_ERR_INVALID_ARGUMENT
    assert lib.sora_peer_attach_video_simulcast(loop.b._ptr, loop.source, 0, params, encs, 1) == \
        lib.SORA_ERR_INVALID_ARGUMENT  # no rid
    assert lib.sora_peer_attach_video_simulcast(ffi.NULL, loop.source, 0, params, encs, 1) == \
        lib.SORA_ERR_INVALID_ARGUMENT
    assert lib.sora_peer_attach_video_simulcast(loop.b._ptr, loop.source, 5, params, encs, 0) == \
        lib.SORA_ERR_INVALID_ARGUMENT
    # the extmap ids are read from the applied offer when not given
    loop.negotiate([{"rid": "r0"}, {"rid": "r1"}])
    assert "a=simulcast:send r0;r1" in _lines(loop.answer)


def test_offer_state_and_extmaps_are_required():
    ctx = Context()
    try:
        out = ffi.new("sora_video_source **")
        check(lib.sora_video_source_create(ctx.ptr, out))
        source = out[0]
        early = Peer(ctx)
        with pytest.raises(SoraInvalidState):  # no offer applied yet
            early.attach_video_simulcast(source, 0, "VP8", 96, [{"rid": "r0"}])
        early.close()
        a, b = Peer(ctx), Peer(ctx)
        a.add_transceiver("video", "recvonly", simulcast_caps(mid_id=None, rid_id=None))
        b.set_remote_description("offer", a.create_offer())
        with pytest.raises(SoraUnsupported, match="extmap"):
            b.attach_video_simulcast(source, 0, "VP8", 96, [{"rid": "r0"}, {"rid": "r1"}])
        a.close()
        b.close()
        lib.sora_video_source_destroy(source)
    finally:
        ctx.close()


def test_plan_defaults_share_the_bitrate_by_area():
    layers = plan_simulcast([{"rid": "r0"}, {"rid": "r1"}, {"rid": "r2", "active": False}], 1000)
    assert [l["scale"] for l in layers] == [4.0, 2.0, 1.0]
    assert layers[0]["bitrate"] + layers[1]["bitrate"] in range(999_000, 1_000_001)
    assert layers[1]["bitrate"] == 4 * layers[0]["bitrate"] or abs(layers[1]["bitrate"] - 4 * layers[0]["bitrate"]) < 4
    assert len({l["ssrc"] for l in layers}) == 3 and all(l["ssrc"] for l in layers)
    two = plan_simulcast([{"rid": "a"}, {"rid": "b", "maxBitrate": 500000}], 1000)
    assert [l["scale"] for l in two] == [2.0, 1.0] and two[1]["bitrate"] == 500000
    assert simulcast_layer_size(1280, 720, {"scale": 1, "max_width": 640, "max_height": 0}) == (640, 352)
    assert simulcast_layer_size(960, 540, {"scale": 1, "max_width": 640, "max_height": 0}) == (640, 352)
    assert simulcast_layer_size(320, 180, {"scale": 1, "max_width": 1920, "max_height": 1080}) == (320, 176)


# --------------------------------------------------------------------------- SDK level

ENCODINGS = [{"rid": "r0", "active": True, "scaleResolutionDownBy": 4},
             {"rid": "r1", "scaleResolutionDownBy": 2},
             {"rid": "r2", "active": False}]


def simulcast_offer(encodings, paused=("r2",), flag: bool = True):
    """A real offer from a server-side peer whose video m-line receives rid r0..r2 (as Sora's), plus JSON."""

    def step(s) -> None:
        s.peer = Peer(server_context(), on_event=None)
        s.peer.add_transceiver("video", "recvonly", simulcast_caps(paused=paused))
        s.peer.add_transceiver("audio", "recvonly", OPUS_CAPS)
        s.peer.create_offer()
        s.peer.wait_gathering_complete(5.0)
        sdp = s.peer.local_description()
        s.offer_sdp = sdp
        extra = {"simulcast": True} if flag else {}
        s.send(s.offer_message(sdp, encodings=encodings, **extra))
    return step


def _pump(video, stop: threading.Event) -> None:
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    i = 0
    while not stop.is_set():
        frame[:] = (i * 3) % 256
        video.on_captured(frame)
        i += 1
        time.sleep(1 / 30)


def test_sdk_answers_simulcast_offer_and_reports_per_rid_stats(sora, make_server, make_client):
    release = threading.Event()
    server = make_server([expect("connect"), simulcast_offer(ENCODINGS), answer(), notify_created(),
                          wait_event(release, 20), reoffer(), expect("re-answer")])
    video = sora.create_video_source()
    conn, rec = make_client(server, role="sendonly", video_source=video, simulcast=True, video_codec_type="VP8",
                            video_bit_rate=900)
    stop = threading.Event()
    pump = threading.Thread(target=_pump, args=(video, stop), daemon=True)
    pump.start()
    try:
        conn.connect()
        session = server.wait_session()
        connect = session.wait_message("connect").json
        assert connect["simulcast"] is True
        lines = _lines(session.wait_message("answer", 10).json["sdp"])
        assert [l for l in lines if l.startswith("a=rid:")] == ["a=rid:r0 send", "a=rid:r1 send", "a=rid:r2 send"]
        assert "a=simulcast:send r0;r1;~r2" in lines
        assert _wait(lambda: conn.connection_state == "connected", 10), conn.connection_state

        def outbound() -> Dict[str, dict]:
            return {s["rid"]: s for s in json.loads(conn.get_stats())
                    if s["type"] == "outbound-rtp" and "rid" in s}
        assert _wait(lambda: all(outbound().get(r, {}).get("packetsSent", 0) > 10 for r in ("r0", "r1")), 10), \
            outbound()
        stats = outbound()
        assert sorted(stats) == ["r0", "r1", "r2"]
        assert stats["r0"]["active"] is True and stats["r1"]["active"] is True and stats["r2"]["active"] is False
        assert (stats["r0"]["frameWidth"], stats["r0"]["frameHeight"]) == (160, 80)
        assert (stats["r1"]["frameWidth"], stats["r1"]["frameHeight"]) == (320, 176)
        assert "frameWidth" not in stats["r2"] and stats["r2"]["packetsSent"] == 0
        assert all(s["kind"] == "video" for s in stats.values())
        codecs = {s["id"]: s for s in json.loads(conn.get_stats()) if s["type"] == "codec"}
        assert codecs[stats["r0"]["codecId"]]["mimeType"] == "video/VP8"
        assert stats["r0"]["encoderImplementation"] == "SimulcastEncoderAdapter (libvpx, libvpx)"
        # the encoders' targets: the 900 kbps less the packet overhead (libwebrtc's targetBitrate), below the cap
        assert stats["r0"]["targetBitrate"] + stats["r1"]["targetBitrate"] in range(780_000, 900_000)
        assert len({s["ssrc"] for s in stats.values()}) == 3
        # the server received both active layers
        inbound = {s["ssrc"] for s in session.peer.get_stats() if s.get("type") == "inbound-rtp"}
        assert {stats["r0"]["ssrc"], stats["r1"]["ssrc"]} <= inbound and stats["r2"]["ssrc"] not in inbound
        # a re-offer keeps the layers (same SSRCs) and announces them again
        sent_before = stats["r1"]["bytesSent"]
        release.set()
        reanswer = session.wait_message("re-answer", 10).json["sdp"]
        assert "a=simulcast:send r0;r1;~r2" in _lines(reanswer)
        assert _wait(lambda: outbound().get("r1", {}).get("bytesSent", 0) > sent_before, 5)
        assert {s["ssrc"] for s in outbound().values()} == {s["ssrc"] for s in stats.values()}
    finally:
        stop.set()
        pump.join(2)
        conn.disconnect()


def test_sdk_without_simulcast_flag_sends_one_stream(sora, make_server, make_client):
    """`encodings` without `"simulcast": true` are not applied (as the official SDK)."""
    server = make_server([expect("connect"), simulcast_offer(ENCODINGS, flag=False), answer()])
    video = sora.create_video_source()
    conn, rec = make_client(server, role="sendonly", video_source=video)
    conn.connect()
    session = server.wait_session()
    lines = _lines(session.wait_message("answer", 10).json["sdp"])
    assert not [l for l in lines if l.startswith("a=simulcast")]
    conn.disconnect()
