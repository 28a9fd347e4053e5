"""Peer-connection rules of sora_c.h: validation, negotiation over loopback, data channels, stats, close/destroy."""
from __future__ import annotations

import json
import threading
import time

import pytest

from .conftest import (CONNECTION_STATES, ICE_CONNECTION_STATES, ICE_GATHERING_STATES, INVALID_ARGUMENT,
                       INVALID_STATE, NOT_FOUND, OK, OPUS_CAPS, VP8_CAPS, candidate_address, codec_params, expect,
                       ffi, is_loopback, last_error, lib, negotiate, sdp_media_kinds, wait_until)

E = lib  # event and direction constants live on lib
SENDRECV, RECVONLY, SENDONLY, INACTIVE = (lib.SORA_DIRECTION_SENDRECV, lib.SORA_DIRECTION_RECVONLY,
                                          lib.SORA_DIRECTION_SENDONLY, lib.SORA_DIRECTION_INACTIVE)
CANDIDATE = b"candidate:1 1 UDP 2015364095 127.0.0.1 40000 typ host"


def strict_json(text: str):
    def no_constants(name):
        raise ValueError("not JSON: %s" % name)

    return json.loads(text, parse_constant=no_constants)


def _channel_events(rec, event_type, label=None):
    return [e for e in rec.of_type(event_type) if label is None or e.str0 == label]


def wait_open(peer, label):
    assert peer.rec.wait_for(lambda evs: any(e.type == E.SORA_EVENT_DATA_CHANNEL_OPEN and e.str0 == label
                                             for e in evs)), "%s: data channel %r never opened" % (peer.name, label)
    return _channel_events(peer.rec, E.SORA_EVENT_DATA_CHANNEL_OPEN, label)[0]


def messages(peer, label):
    return [(e.data, e.i1) for e in _channel_events(peer.rec, E.SORA_EVENT_DATA_CHANNEL_MESSAGE, label)]


# ---- lifecycle ----------------------------------------------------------------------


def test_create_and_destroy_fires_on_destroy_once(ctx):
    p = ctx.peer("solo")
    p.destroy()
    assert p.rec.wait_destroyed(), "no on_destroy after sora_peer_destroy"
    time.sleep(0.2)
    assert p.rec.destroy_count == 1
    p.rec.check()


def test_close_twice_then_destroy(ctx, peer):
    expect(peer.add_transceiver(b"audio", SENDRECV), OK, "add transceiver")
    peer.create_offer()
    expect(lib.sora_peer_close(peer.ptr), OK, "first close")
    expect(lib.sora_peer_close(peer.ptr), OK, "second close")
    peer.destroy()
    assert peer.rec.wait_destroyed()
    time.sleep(0.2)
    assert peer.rec.destroy_count == 1
    peer.rec.check()


def test_destroy_while_gathering(ctx):
    p = ctx.peer("gathering")
    expect(p.add_transceiver(b"video", RECVONLY, VP8_CAPS), OK, "add transceiver")
    p.create_data_channel("x")
    p.create_offer()
    p.destroy()
    assert p.rec.wait_destroyed()
    time.sleep(0.3)
    assert p.rec.destroy_count == 1
    p.rec.check()


def test_request_key_frame_without_encoders(peer):
    expect(lib.sora_peer_request_key_frame(peer.ptr), OK, "sora_peer_request_key_frame")


# ---- transceivers -----------------------------------------------------------------------


def test_add_transceivers_become_m_lines(peer):
    expect(peer.add_transceiver(b"video", RECVONLY, VP8_CAPS), OK, "video recvonly")
    expect(peer.add_transceiver(b"audio", RECVONLY, OPUS_CAPS), OK, "audio recvonly")
    expect(peer.add_transceiver(b"video", SENDRECV, VP8_CAPS), OK, "video sendrecv")
    expect(peer.add_transceiver(b"audio", SENDONLY, OPUS_CAPS), OK, "audio sendonly")
    offer = peer.create_offer()
    assert offer.startswith("v=0")
    assert sdp_media_kinds(offer) == ["video", "audio", "video", "audio"]
    assert "a=recvonly" in offer and "a=sendrecv" in offer and "a=sendonly" in offer


@pytest.mark.parametrize("kind", [b"data", b"application", b"", b"videoo", b"audio "])
def test_add_transceiver_bad_kind(peer, kind):
    expect(peer.add_transceiver(kind, SENDRECV), INVALID_ARGUMENT, "add_transceiver(kind=%r)" % kind)


@pytest.mark.parametrize("direction", [-1, 4, 100, -(2 ** 31)])
def test_add_transceiver_bad_direction(peer, direction):
    expect(peer.add_transceiver(b"video", direction, VP8_CAPS), INVALID_ARGUMENT,
           "add_transceiver(direction=%d)" % direction)


@pytest.mark.parametrize("caps", [b"not caps ((", b"application/x-rtp, payload=(int)abc", b",,,"])
def test_add_transceiver_bad_caps(peer, caps):
    expect(peer.add_transceiver(b"video", RECVONLY, caps), INVALID_ARGUMENT, "add_transceiver(caps=%r)" % caps)


def test_set_direction(peer):
    expect(peer.add_transceiver(b"video", RECVONLY, VP8_CAPS), OK, "add transceiver")
    expect(lib.sora_peer_set_direction(peer.ptr, 0, SENDRECV), OK, "set_direction(0, sendrecv)")
    expect(lib.sora_peer_set_direction(peer.ptr, 0, INACTIVE), OK, "set_direction(0, inactive)")
    expect(lib.sora_peer_set_direction(peer.ptr, 0, 4), INVALID_ARGUMENT, "set_direction(0, 4)")
    expect(lib.sora_peer_set_direction(peer.ptr, 0, -1), INVALID_ARGUMENT, "set_direction(0, -1)")
    expect(lib.sora_peer_set_direction(peer.ptr, 5, SENDRECV), NOT_FOUND, "set_direction(5, sendrecv)")


def test_set_direction_negative_mline(peer):
    rc = lib.sora_peer_set_direction(peer.ptr, -1, SENDRECV)
    assert rc in (INVALID_ARGUMENT, NOT_FOUND), "set_direction(-1) returned %d" % rc


# ---- descriptions ---------------------------------------------------------------------------


@pytest.mark.parametrize("sdp", [b"", b"hello world", b"v=0\r\n", b"m=video 9 RTP/AVP 96\r\n",
                                 b"\xff\xfe garbage \x01\x02"])
def test_set_remote_description_garbage(peer, sdp):
    expect(lib.sora_peer_set_remote_description(peer.ptr, b"offer", sdp), INVALID_ARGUMENT,
           "set_remote_description(%r)" % sdp)


@pytest.mark.parametrize("sdp_type", [b"pranswer", b"rollback", b"", b"Offer "])
def test_set_remote_description_bad_type(ctx, sdp_type):
    src = ctx.peer("src")
    expect(src.add_transceiver(b"audio", SENDRECV, OPUS_CAPS), OK, "add transceiver")
    offer = src.create_offer().encode()
    dst = ctx.peer("dst")
    expect(lib.sora_peer_set_remote_description(dst.ptr, sdp_type, offer), INVALID_ARGUMENT,
           "set_remote_description(type=%r)" % sdp_type)


def test_create_offer_returns_sdp_with_m_lines(peer):
    expect(peer.add_transceiver(b"video", RECVONLY, VP8_CAPS), OK, "video")
    expect(peer.add_transceiver(b"audio", RECVONLY, OPUS_CAPS), OK, "audio")
    peer.create_data_channel("dc")
    out = ffi.new("char **")
    expect(lib.sora_peer_create_offer(peer.ptr, out), OK, "sora_peer_create_offer")
    assert out[0] != ffi.NULL
    raw = ffi.string(out[0])  # NUL-terminated
    lib.sora_c_free(out[0])   # caller-owned
    offer = raw.decode("utf-8")
    assert offer.startswith("v=0")
    assert sdp_media_kinds(offer) == ["video", "audio", "application"]
    local = peer.local_description()
    assert sdp_media_kinds(local) == ["video", "audio", "application"]


def test_local_description_before_any_offer(peer):
    out = ffi.new("char **")
    expect(lib.sora_peer_get_local_description(peer.ptr, out), INVALID_STATE, "local description before offer")


@pytest.mark.parametrize("candidate", [b"", b"hello", b"a=hello", b"candidat:1 1 UDP 1 127.0.0.1 1 typ host"])
def test_add_ice_candidate_garbage(peer, candidate):
    expect(lib.sora_peer_add_ice_candidate(peer.ptr, 0, candidate), INVALID_ARGUMENT,
           "add_ice_candidate(%r)" % candidate)


def test_add_ice_candidate_negative_mline(peer):
    expect(lib.sora_peer_add_ice_candidate(peer.ptr, -1, CANDIDATE), INVALID_ARGUMENT, "add_ice_candidate(-1)")


def test_add_ice_candidate_with_and_without_prefix(ctx):
    a, b = ctx.peer("a"), ctx.peer("b")
    expect(a.add_transceiver(b"audio", SENDRECV, OPUS_CAPS), OK, "add transceiver")
    b.set_remote("offer", a.create_offer())
    expect(lib.sora_peer_add_ice_candidate(b.ptr, 0, CANDIDATE), OK, "candidate without a=")
    expect(lib.sora_peer_add_ice_candidate(b.ptr, 0, b"a=" + CANDIDATE.replace(b"40000", b"40001")), OK,
           "candidate with a=")


def test_loopback_peer_ignores_off_loopback_candidates(ctx):
    a, b = ctx.peer("a"), ctx.peer("b")
    expect(a.add_transceiver(b"audio", SENDRECV, OPUS_CAPS), OK, "add transceiver")
    b.set_remote("offer", a.create_offer())
    rc = lib.sora_peer_add_ice_candidate(b.ptr, 0, b"candidate:9 1 UDP 2015364095 192.0.2.7 40000 typ host")
    assert rc in (OK, INVALID_ARGUMENT), "off-loopback candidate returned %d" % rc


# ---- negotiation over loopback ------------------------------------------------------------------


def test_two_peers_connect_over_loopback_only(ctx):
    a, b = ctx.peer("offerer"), ctx.peer("answerer")
    expect(a.add_transceiver(b"video", RECVONLY, VP8_CAPS), OK, "video")
    expect(a.add_transceiver(b"audio", RECVONLY, OPUS_CAPS), OK, "audio")
    a.create_data_channel("dc")
    offer, answer = negotiate(a, b)
    n_mlines = len(sdp_media_kinds(offer))
    assert sdp_media_kinds(answer) == sdp_media_kinds(offer)
    for p in (a, b):
        cands = p.rec.of_type(E.SORA_EVENT_ICE_CANDIDATE)
        assert cands, "%s: no ICE candidate events" % p.name
        for e in cands:
            assert e.str0.startswith("candidate:"), "%s: candidate %r" % (p.name, e.str0)
            assert 0 <= e.i0 < n_mlines, "%s: candidate m-line %d" % (p.name, e.i0)
            assert is_loopback(candidate_address(e.str0)), "%s: non-loopback candidate %r" % (p.name, e.str0)
        assert set(p.rec.states(E.SORA_EVENT_ICE_GATHERING_STATE)) <= ICE_GATHERING_STATES
        assert set(p.rec.states(E.SORA_EVENT_ICE_CONNECTION_STATE)) <= ICE_CONNECTION_STATES
        assert set(p.rec.states(E.SORA_EVENT_CONNECTION_STATE)) <= CONNECTION_STATES
        ice = p.rec.states(E.SORA_EVENT_ICE_CONNECTION_STATE)
        assert "connected" in ice or "completed" in ice, "%s: ICE states %r" % (p.name, ice)
        assert "failed" not in ice
    for p in (a, b):
        assert p.rec.wait_for(lambda evs: any(e.type == E.SORA_EVENT_ICE_GATHERING_STATE and e.str0 == "complete"
                                              for e in evs)), "%s: gathering never completed" % p.name
        local = p.local_description()
        lines = [line for line in local.splitlines() if line.startswith("a=candidate:")]
        for line in lines:
            assert is_loopback(candidate_address(line)), "%s: local description has %r" % (p.name, line)
        for entry in strict_json(p.stats()):
            address = entry.get("address") if isinstance(entry, dict) else None
            if address:
                assert is_loopback(address), "%s: stats show address %r" % (p.name, address)
    main = threading.get_ident()
    for p in (a, b):
        assert main not in p.rec.threads, "%s: a callback ran on the calling thread" % p.name
        assert len(p.rec.threads) == 1
        p.rec.check()
    assert a.rec.threads == b.rec.threads, "two peers of one context got events on different threads"


def test_get_stats_is_a_json_array_of_objects(ctx):
    fresh = ctx.peer("fresh")
    stats = strict_json(fresh.stats())
    assert isinstance(stats, list)
    assert all(isinstance(s, dict) for s in stats)
    a, b = ctx.peer("a"), ctx.peer("b")
    expect(a.add_transceiver(b"audio", RECVONLY, OPUS_CAPS), OK, "audio")
    a.create_data_channel("dc")
    negotiate(a, b)
    for p in (a, b):
        out = ffi.new("char **")
        expect(lib.sora_peer_get_stats(p.ptr, out), OK, "get_stats")
        raw = ffi.string(out[0])
        lib.sora_c_free(out[0])
        stats = strict_json(raw.decode("utf-8"))
        assert isinstance(stats, list) and stats, "%s: empty stats after connecting" % p.name
        assert all(isinstance(s, dict) and s for s in stats)


# ---- data channels ---------------------------------------------------------------------------------


@pytest.fixture
def channel_pair(ctx):
    """Two connected peers and the data channel "chat": (a, a_id, b, b_id)."""
    a, b = ctx.peer("a"), ctx.peer("b")
    a_id = a.create_data_channel("chat")
    negotiate(a, b)
    a_open = wait_open(a, "chat")
    b_open = wait_open(b, "chat")
    assert a_open.i0 == a_id, "the open event's id %d differs from the created id %d" % (a_open.i0, a_id)
    assert a_open.i1 == 0, "a locally created channel is reported as remote"
    assert b_open.i1 == 1, "a remotely created channel is not reported as remote"
    return a, a_id, b, b_open.i0


def test_data_channel_open_counts(channel_pair):
    a, _, b, _ = channel_pair
    assert lib.sora_peer_open_data_channel_count(a.ptr) == 1
    assert lib.sora_peer_open_data_channel_count(b.ptr) == 1


def test_data_channel_messages_both_ways(channel_pair):
    a, a_id, b, b_id = channel_pair
    blob = bytes(range(256)) * 4
    text = "h\u00e9llo \u2713 sora"
    expect(a.send(a_id, blob, True), OK, "a: send binary")
    expect(a.send(a_id, text.encode("utf-8"), False), OK, "a: send text")
    expect(b.send(b_id, b"\x00\x01\x02back", True), OK, "b: send binary")
    expect(b.send(b_id, "r\u00e9ponse".encode("utf-8"), False), OK, "b: send text")
    assert b.rec.wait_for(lambda evs: len([e for e in evs if e.type == E.SORA_EVENT_DATA_CHANNEL_MESSAGE]) >= 2)
    assert a.rec.wait_for(lambda evs: len([e for e in evs if e.type == E.SORA_EVENT_DATA_CHANNEL_MESSAGE]) >= 2)
    assert messages(b, "chat") == [(blob, 1), (text.encode("utf-8"), 0)]
    assert messages(a, "chat") == [(b"\x00\x01\x02back", 1), ("r\u00e9ponse".encode("utf-8"), 0)]
    for e in a.rec.of_type(E.SORA_EVENT_DATA_CHANNEL_MESSAGE):
        assert e.i0 == a_id
    for e in b.rec.of_type(E.SORA_EVENT_DATA_CHANNEL_MESSAGE):
        assert e.i0 == b_id


def test_data_channel_messages_keep_their_order(channel_pair):
    a, a_id, b, _ = channel_pair
    n = 50
    for i in range(n):
        expect(a.send(a_id, b"%04d" % i, i % 2 == 0), OK, "send #%d" % i)
    assert b.rec.wait_for(lambda evs: len([e for e in evs if e.type == E.SORA_EVENT_DATA_CHANNEL_MESSAGE]) >= n)
    got = messages(b, "chat")
    assert [d for d, _ in got] == [b"%04d" % i for i in range(n)]
    assert [flag for _, flag in got] == [1 if i % 2 == 0 else 0 for i in range(n)]



@pytest.mark.parametrize("binary", [1, 0],
                         ids=["binary", "text"])
def test_data_channel_empty_message_keeps_channel_usable(channel_pair, binary):
    """An empty message is delivered (size 0) or refused with an error; the channel keeps working."""
    a, a_id, b, _ = channel_pair
    rc = lib.sora_peer_send_data(a.ptr, a_id, ffi.NULL, 0, binary)
    if rc != OK:
        assert rc < 0 and last_error(), "empty send returned %d without a message" % rc
    expect(a.send(a_id, b"after", True), OK, "send after the empty message")
    arrived = b.rec.wait_for(lambda evs: any(e.type == E.SORA_EVENT_DATA_CHANNEL_MESSAGE and e.data == b"after"
                                             for e in evs), 5)
    errors = [(e.str0, e.str1) for e in a.rec.of_type(E.SORA_EVENT_ERROR) + b.rec.of_type(E.SORA_EVENT_ERROR)]
    assert arrived, "the message after an empty one never arrived (rc of the empty send %d, errors %r)" % (rc, errors)
    assert not errors, "engine errors after an empty message: %r" % errors
    got = messages(b, "chat")
    expected = [(b"", binary), (b"after", 1)] if rc == OK else [(b"after", 1)]
    assert got == expected
    assert lib.sora_peer_open_data_channel_count(b.ptr) == 1


def test_send_on_unknown_channel_is_not_found(peer):
    for channel_id in (0, 7, 12345, -1):
        expect(peer.send(channel_id, b"x", True), NOT_FOUND, "send_data(channel %d)" % channel_id)
        expect(lib.sora_peer_close_data_channel(peer.ptr, channel_id), NOT_FOUND, "close_data_channel(%d)" % channel_id)


def test_send_on_channel_not_yet_open_is_invalid_state(peer):
    channel_id = peer.create_data_channel("later")
    expect(peer.send(channel_id, b"too early", True), INVALID_STATE, "send before open")
    expect(peer.send(channel_id, b"too early", False), INVALID_STATE, "send text before open")
    assert lib.sora_peer_open_data_channel_count(peer.ptr) == 0


def test_strings_passed_in_are_only_borrowed(ctx):
    """The shim copies what it keeps: overwriting a label/protocol buffer after the call changes nothing."""
    a, b = ctx.peer("a"), ctx.peer("b")
    label = ffi.new("char[]", b"borrowed-label")
    protocol = ffi.new("char[]", b"borrowed-proto")
    init = ffi.new("sora_data_channel_init *")
    init.ordered = 1
    init.max_packet_life_time = -1
    init.max_retransmits = -1
    init.protocol = protocol
    init.id = -1
    out = ffi.new("int32_t *")
    expect(lib.sora_peer_create_data_channel(a.ptr, label, init, out), OK, "create_data_channel")
    ffi.memmove(label, b"XXXXXXXXXXXXXX", 14)
    ffi.memmove(protocol, b"YYYYYYYYYYYYYY", 14)
    offer = a.create_offer()
    assert "XXXX" not in offer and "YYYY" not in offer
    a.remote, b.remote = b, a
    sdp = ffi.new("char[]", offer.encode())
    expect(lib.sora_peer_set_remote_description(b.ptr, b"offer", sdp), OK, "set remote offer")
    ffi.memmove(sdp, b"garbage" * 4, 28)
    a.set_remote("answer", b.create_answer())
    assert wait_open(a, "borrowed-label").str0 == "borrowed-label"
    assert wait_open(b, "borrowed-label").str0 == "borrowed-label"


def test_create_data_channel_options(peer):
    ids = set()
    for ordered, life, retransmits, protocol in ((1, -1, -1, None), (0, -1, 0, b"proto"), (0, 500, -1, None)):
        init = ffi.new("sora_data_channel_init *")
        init.ordered = ordered
        init.max_packet_life_time = life
        init.max_retransmits = retransmits
        proto = ffi.new("char[]", protocol) if protocol else ffi.NULL
        init.protocol = proto
        init.id = -1
        out = ffi.new("int32_t *")
        expect(lib.sora_peer_create_data_channel(peer.ptr, b"opt", init, out), OK, "create_data_channel")
        ids.add(out[0])
    assert len(ids) == 3, "data channel ids are not distinct: %r" % ids


def test_close_data_channel(channel_pair):
    a, a_id, b, b_id = channel_pair
    expect(lib.sora_peer_close_data_channel(a.ptr, a_id), OK, "close_data_channel")
    assert b.rec.wait_for(lambda evs: any(e.type == E.SORA_EVENT_DATA_CHANNEL_CLOSE for e in evs)), \
        "the remote side got no close event"
    closed = b.rec.of_type(E.SORA_EVENT_DATA_CHANNEL_CLOSE)[0]
    assert closed.i0 == b_id and closed.str0 == "chat"
    assert wait_until(lambda: lib.sora_peer_open_data_channel_count(a.ptr) == 0, 5)
    assert wait_until(lambda: lib.sora_peer_open_data_channel_count(b.ptr) == 0, 5)
    rc = a.send(a_id, b"after close", True)
    assert rc in (INVALID_STATE, NOT_FOUND), "send on a closed channel returned %d" % rc


# ---- after close / destroy ------------------------------------------------------------------------


def test_calls_after_close_are_invalid_state(ctx):
    p = ctx.peer("closing")
    expect(p.add_transceiver(b"video", RECVONLY, VP8_CAPS), OK, "add transceiver")
    dc = p.create_data_channel("dc")
    offer = p.create_offer().encode()
    vspp = ffi.new("sora_video_source **")
    aspp = ffi.new("sora_audio_source **")
    expect(lib.sora_video_source_create(ctx.ptr, vspp), OK, "video source")
    expect(lib.sora_audio_source_create(ctx.ptr, 1, 48000, aspp), OK, "audio source")
    vp8 = codec_params(b"VP8", 96, 90000)
    opus = codec_params(b"OPUS", 111, 48000, 2)
    expect(lib.sora_peer_close(p.ptr), OK, "sora_peer_close")
    out = ffi.new("char **")
    id_out = ffi.new("int32_t *")
    data = ffi.new("uint8_t[]", b"abc")
    calls = {
        "add_transceiver": lambda: lib.sora_peer_add_transceiver(p.ptr, b"audio", SENDRECV, ffi.NULL),
        "set_direction": lambda: lib.sora_peer_set_direction(p.ptr, 0, SENDRECV),
        "set_remote_description": lambda: lib.sora_peer_set_remote_description(p.ptr, b"offer", offer),
        "create_offer": lambda: lib.sora_peer_create_offer(p.ptr, out),
        "create_answer": lambda: lib.sora_peer_create_answer(p.ptr, out),
        "get_local_description": lambda: lib.sora_peer_get_local_description(p.ptr, out),
        "add_ice_candidate": lambda: lib.sora_peer_add_ice_candidate(p.ptr, 0, CANDIDATE),
        "attach_video_source": lambda: lib.sora_peer_attach_video_source(p.ptr, vspp[0], 0, vp8[0]),
        "attach_audio_source": lambda: lib.sora_peer_attach_audio_source(p.ptr, aspp[0], 0, opus[0]),
        "request_key_frame": lambda: lib.sora_peer_request_key_frame(p.ptr),
        "create_data_channel": lambda: lib.sora_peer_create_data_channel(p.ptr, b"late", ffi.NULL, id_out),
        "send_data": lambda: lib.sora_peer_send_data(p.ptr, dc, data, 3, 1),
        "close_data_channel": lambda: lib.sora_peer_close_data_channel(p.ptr, dc),
        "open_data_channel_count": lambda: lib.sora_peer_open_data_channel_count(p.ptr),
        "get_stats": lambda: lib.sora_peer_get_stats(p.ptr, out),
    }
    wrong = {}
    for name, call in calls.items():
        rc = call()
        if rc != INVALID_STATE or not last_error():
            wrong[name] = (rc, last_error())
    assert not wrong, "after sora_peer_close these did not return INVALID_STATE with a message: %r" % wrong
    expect(lib.sora_peer_close(p.ptr), OK, "close again")
    p.destroy()
    assert p.rec.wait_destroyed()
    assert p.rec.destroy_count == 1


def test_no_events_after_on_destroy_while_traffic_flows(ctx):
    a, b = ctx.peer("a"), ctx.peer("b")
    a_id = a.create_data_channel("flood")
    negotiate(a, b)
    wait_open(a, "flood")
    wait_open(b, "flood")
    stop = threading.Event()
    results = []

    def flood():
        while not stop.is_set():
            results.append(a.send(a_id, b"x" * 200, True))
            time.sleep(0.002)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        assert b.rec.wait_for(lambda evs: len(evs) > 30, 5), "no messages flowed"
        b.destroy()
        assert b.rec.wait_destroyed(), "no on_destroy"
        time.sleep(0.5)  # a keeps sending into the dead connection
    finally:
        stop.set()
        t.join(5)
    assert b.rec.destroy_count == 1
    b.rec.check()
    assert OK in results
    assert set(results) <= {OK, INVALID_STATE, lib.SORA_ERR_ENGINE}, set(results)


def test_destroy_peer_from_its_own_callback(ctx):
    """sora_peer_destroy called on the dispatcher thread, inside the peer's own event callback."""
    a, b = ctx.peer("a"), ctx.peer("b")
    a.create_data_channel("dc")
    result = {}

    def hook(event):
        b._hook(event)  # keep relaying candidates
        if event.type == E.SORA_EVENT_DATA_CHANNEL_OPEN and "rc" not in result:
            b.destroy_called = True
            result["rc"] = lib.sora_peer_destroy(b.ptr)

    b.rec.hook = hook
    a.remote, b.remote = b, a
    b.set_remote("offer", a.create_offer())
    a.set_remote("answer", b.create_answer())
    assert b.rec.wait_destroyed(10), "no on_destroy after destroying the peer from its callback"
    assert result.get("rc") == OK, "sora_peer_destroy from the dispatcher returned %r" % result.get("rc")
    time.sleep(0.5)
    assert b.rec.destroy_count == 1
    b.rec.check()
    strict_json(a.stats())  # the other peer keeps working
