"""How sora_sdk.SoraConnection ends when the signaling server or the network misbehaves.

signaling.md §1 (handshake failures, timeouts), §13 (server-initiated ends:
close 1000 / other codes / TCP drop, before and after the offer), §14 (codes),
and malformed server input. The official SDK aborts the process on malformed
input; ours must end the connection with exactly one on_disconnect and a clear
message, and the process must stay healthy. Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import threading
import time

import pytest

import sora_sdk
from sora_sdk import SoraSignalingErrorCode as Code
from sora_sdk import websocket as wsm

from scripted_server import (Recorder, ScriptedServer, answer, close, drop, expect, hang_guard,  # noqa: F401
                             make_client, make_server, notify_created, offer, push, raw_offer, send,
                             send_big, send_binary, send_frame, send_raw, sleep, sora, wait_event)

pytestmark = pytest.mark.usefixtures("hang_guard")

GRACEFUL = "The WebSocket stream was gracefully closed at both endpoints"
WS_CLOSE_OK = "Succeeded to close WebSocket (DC signaling is not enabled)"


def dead_url() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    url = "ws://127.0.0.1:%d/signaling" % probe.getsockname()[1]
    probe.close()
    return url


def assert_single_disconnect(rec, settle=0.3):
    time.sleep(settle)
    assert len(rec.of("on_disconnect")) == 1, rec.events


def assert_healthy(sora, make_server, make_client):
    """A fresh connection on the same Sora still works end to end."""
    server = make_server()
    conn, rec = make_client(server)
    conn.connect()
    rec.wait("on_notify")
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


# --------------------------------------------------------------------------- server-initiated ends

BEFORE_OFFER = [expect("connect")]
AFTER_OFFER = [expect("connect"), offer(), answer(), notify_created()]

SERVER_ENDS = [
    ("close-1000", close(1000, "DISCONNECTED-API"), (1000, "DISCONNECTED-API"), Code.CLOSE_SUCCEEDED,
     "Succeeded to close WebSocket from server: ec=%s wscode=1000 wsreason=DISCONNECTED-API" % GRACEFUL),
    ("close-1000-type-disconnect", close(1000, "TYPE-DISCONNECT"), (1000, "TYPE-DISCONNECT"), Code.CLOSE_SUCCEEDED,
     "Succeeded to close WebSocket from server: ec=%s wscode=1000 wsreason=TYPE-DISCONNECT" % GRACEFUL),
    ("close-4000", close(4000, "TEST-ERROR"), (4000, "TEST-ERROR"), Code.WEBSOCKET_ONCLOSE,
     "Failed to read WebSocket: ec=%s wscode=4000 wsreason=TEST-ERROR" % GRACEFUL),
    ("close-1011", close(1011, ""), (1011, ""), Code.WEBSOCKET_ONCLOSE,
     "Failed to read WebSocket: ec=%s wscode=1011 wsreason=" % GRACEFUL),
    ("tcp-drop", drop(), (0, ""), Code.WEBSOCKET_ONERROR,
     "Failed to read WebSocket: ec=End of file wscode=0 wsreason="),
]


@pytest.mark.parametrize("when", ["before-offer", "after-offer"])
@pytest.mark.parametrize("case", SERVER_ENDS, ids=[c[0] for c in SERVER_ENDS])
def test_server_ends_the_connection(sora, make_server, make_client, when, case):
    _, step, ws_close, code, message = case
    server = make_server((BEFORE_OFFER if when == "before-offer" else AFTER_OFFER) + [sleep(0.05), step])
    conn, rec = make_client(server)
    conn.connect()
    assert rec.wait_disconnect() == (code, message)
    assert rec.of("on_ws_close") == [ws_close]
    names = rec.names()
    assert names.index("on_ws_close") < names.index("on_disconnect")
    if when == "after-offer":
        assert rec.of("on_notify")
    else:
        assert rec.of("on_set_offer") == []
    started = time.monotonic()
    conn.disconnect()  # already ended: returns at once
    assert time.monotonic() - started < 0.5
    assert_single_disconnect(rec)
    assert conn.connection_state == "closed"


def test_tcp_reset(sora, make_server, make_client):
    server = make_server(AFTER_OFFER + [sleep(0.05), drop(reset=True)])
    conn, rec = make_client(server)
    conn.connect()
    code, message = rec.wait_disconnect()
    assert code == Code.WEBSOCKET_ONERROR
    assert message.startswith("Failed to read WebSocket: ec=") and message.endswith(" wscode=0 wsreason=")
    assert rec.of("on_ws_close") == [(0, "")]
    assert_single_disconnect(rec)


def test_server_close_while_client_disconnects(sora, make_server, make_client):
    """The server's close 4000 crossing our disconnect still yields exactly one on_disconnect."""
    from scripted_server import on_disconnect_close

    server = make_server([on_disconnect_close(4000, "BYE")] + AFTER_OFFER)
    conn, rec = make_client(server)
    conn.connect()
    rec.wait("on_notify")
    conn.disconnect()
    assert rec.of("on_ws_close") == [(4000, "BYE")]
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]
    assert_single_disconnect(rec)


# --------------------------------------------------------------------------- handshake failures

def test_handshake_dead_port(sora, make_client):
    url = dead_url()
    conn, rec = make_client(url)
    conn.connect()
    assert rec.wait_disconnect() == (Code.WEBSOCKET_HANDSHAKE_FAILED,
                                     "Failed Websocket handshake: last_ec=Connection refused last_url=%s" % url)
    assert rec.of("on_ws_close") == []
    assert rec.of("on_signaling_message") == []
    assert_single_disconnect(rec)


def test_handshake_http_403(sora, make_server, make_client):
    server = make_server(handshake=403)
    conn, rec = make_client(server)
    conn.connect()
    assert rec.wait_disconnect() == (
        Code.WEBSOCKET_HANDSHAKE_FAILED,
        "Failed Websocket handshake: last_ec=The WebSocket handshake was declined by the remote peer last_url=%s"
        % server.url)
    assert len(server.requests) == 1
    assert server.requests[0].headers["upgrade"].lower() == "websocket"
    assert rec.of("on_ws_close") == []
    assert_single_disconnect(rec)


def test_handshake_all_urls_fail_reports_one_of_them(sora, make_server, make_client):
    server = make_server(handshake=403)
    dead = dead_url()
    conn, rec = make_client([dead, server])
    conn.connect()
    code, message = rec.wait_disconnect()
    assert code == Code.WEBSOCKET_HANDSHAKE_FAILED
    assert message in (
        "Failed Websocket handshake: last_ec=Connection refused last_url=%s" % dead,
        "Failed Websocket handshake: last_ec=The WebSocket handshake was declined by the remote peer last_url=%s"
        % server.url)
    assert_single_disconnect(rec)


@pytest.mark.parametrize("urls,expected", [
    (["http://127.0.0.1:1/signaling"], "Invalid Signaling URL: http://127.0.0.1:1/signaling | "),
    ([""], "Invalid Signaling URL:  | "),
    (["https://127.0.0.1/x", "tcp://127.0.0.1:2"], "Invalid Signaling URL: https://127.0.0.1/x | "
                                                    "Invalid Signaling URL: tcp://127.0.0.1:2 | "),
])
def test_bad_scheme(sora, make_client, urls, expected):
    conn, rec = make_client(urls)
    started = time.monotonic()
    conn.connect()
    code, message = rec.wait_disconnect()
    assert code == Code.INVALID_PARAMETER
    # one "Invalid Signaling URL: <url> | " chunk per URL; the URL list is shuffled first, as in the official SDK
    chunks = message.split(" | ")
    assert chunks[-1] == "" and message.endswith(" | ")
    assert sorted(chunks[:-1]) == sorted(expected.split(" | ")[:-1])
    assert time.monotonic() - started < 2.0
    assert rec.of("on_ws_close") == []
    assert_single_disconnect(rec)


def test_bad_scheme_next_to_a_good_url_is_skipped(sora, make_server, make_client):
    server = make_server()
    conn, rec = make_client(["http://127.0.0.1:1/signaling", server])
    conn.connect()
    rec.wait("on_notify")
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


def test_handshake_timeout(sora, make_server, make_client):
    server = make_server(handshake="silent")  # accepts TCP, never answers the upgrade
    conn, rec = make_client(server, websocket_connection_timeout=1)
    started = time.monotonic()
    conn.connect()
    assert rec.wait_disconnect(timeout=5) == (Code.INTERNAL_ERROR, "Connection timeout")
    took = time.monotonic() - started
    assert 0.8 <= took <= 2.5, took
    assert server.tcp_accepts == 1
    assert rec.of("on_ws_close") == []
    assert_single_disconnect(rec)


def test_server_drops_tcp_during_handshake(sora, make_server, make_client):
    server = make_server(handshake="close")
    conn, rec = make_client(server)
    conn.connect()
    code, message = rec.wait_disconnect()
    assert code == Code.WEBSOCKET_HANDSHAKE_FAILED
    assert message.startswith("Failed Websocket handshake: last_ec=") and message.endswith("last_url=" + server.url)
    assert_single_disconnect(rec)


# --------------------------------------------------------------------------- malformed server input

def deep(n):
    return "[" * n + "]" * n


NOT_JSON = "Received a message that is not JSON"
NO_TYPE = 'Received a JSON message without a string "type"'
BAD_OFFER = "Received an invalid offer ("
VALID_CONFIG = {"iceServers": []}

# (id, steps sent after `connect`, expected code, expected message start (or a predicate))
MALFORMED = [
    ("non-json-text", [send("this is not json {")], Code.INTERNAL_ERROR, NOT_JSON),
    ("empty-text", [send("")], Code.INTERNAL_ERROR, NOT_JSON),
    ("truncated-json", [send('{"type":"offer","sdp":')], Code.INTERNAL_ERROR, NOT_JSON),
    ("binary-garbage", [send_binary(b"\xff\xfe\x00\x01garbage\x80")], Code.INTERNAL_ERROR,
     "Received a message that is not UTF-8 from the signaling server"),
    ("binary-json-object-without-type", [send_binary(b'{"a":1}')], Code.INTERNAL_ERROR, NO_TYPE),
    ("invalid-utf8-text-frame", [send_frame(wsm.OP_TEXT, b'{"type":"\xff\xfe"}')], Code.WEBSOCKET_ONERROR,
     "Invalid WebSocket frame: Invalid UTF-8"),
    ("json-array", [send("[1,2,3]")], Code.INTERNAL_ERROR, NO_TYPE),
    ("json-string", [send('"offer"')], Code.INTERNAL_ERROR, NO_TYPE),
    ("json-null", [send("null")], Code.INTERNAL_ERROR, NO_TYPE),
    ("object-without-type", [send({"sdp": "x"})], Code.INTERNAL_ERROR, NO_TYPE),
    ("type-not-a-string", [send({"type": 5})], Code.INTERNAL_ERROR, NO_TYPE),
    ("type-null", [send({"type": None})], Code.INTERNAL_ERROR, NO_TYPE),
    ("type-list", [send({"type": ["offer"]})], Code.INTERNAL_ERROR, NO_TYPE),
    ("offer-without-sdp", [raw_offer(connection_id="c", config=VALID_CONFIG)], Code.INTERNAL_ERROR,
     BAD_OFFER + "offer has no sdp string"),
    ("offer-sdp-not-string", [raw_offer(sdp=5, connection_id="c", config=VALID_CONFIG)], Code.INTERNAL_ERROR,
     BAD_OFFER + "offer has no sdp string"),
    ("offer-without-connection-id", [raw_offer(sdp="v=0", config=VALID_CONFIG)], Code.INTERNAL_ERROR,
     BAD_OFFER + "offer has no connection_id string"),
    ("offer-without-config", [raw_offer(sdp="v=0", connection_id="c")], Code.INTERNAL_ERROR,
     BAD_OFFER + "offer has no config object"),
    ("offer-config-not-object", [raw_offer(sdp="v=0", connection_id="c", config=[])], Code.INTERNAL_ERROR,
     BAD_OFFER + "offer has no config object"),
    ("offer-ice-servers-not-list", [raw_offer(sdp="v=0", connection_id="c", config={"iceServers": "stun:x"})],
     Code.INTERNAL_ERROR, BAD_OFFER + "offer config.iceServers is not an array"),
    ("offer-ice-server-without-urls", [raw_offer(sdp="v=0", connection_id="c",
                                                 config={"iceServers": [{"username": "u"}]})],
     Code.INTERNAL_ERROR, BAD_OFFER),
    ("offer-ice-credential-lone-surrogate", [raw_offer(sdp="v=0", connection_id="c", config={"iceServers": [
        {"urls": ["turn:127.0.0.1:3478"], "username": "u", "credential": "\udc80\udc80"}]})],
     Code.INTERNAL_ERROR, BAD_OFFER + "offer config.iceServers entry with a string that is not valid Unicode"),
    ("offer-sdp-lone-surrogate", [raw_offer(sdp="v=0\r\ns=\ud800\r\n", connection_id="c", config=VALID_CONFIG)],
     Code.INTERNAL_ERROR, BAD_OFFER + "offer sdp is not valid Unicode"),
    ("offer-data-channels-not-list", [raw_offer(sdp="v=0", connection_id="c", config=VALID_CONFIG,
                                                data_channels="x")], Code.INTERNAL_ERROR, BAD_OFFER),
    ("offer-garbage-sdp", [raw_offer(sdp="this is not an SDP", connection_id="c", config=VALID_CONFIG)],
     Code.ICE_FAILED, "Failed to SetRemoteDescription"),
    ("offer-empty-sdp", [raw_offer(sdp="", connection_id="c", config=VALID_CONFIG)],
     Code.ICE_FAILED, "Failed to SetRemoteDescription"),
    ("redirect-without-location", [send({"type": "redirect"})], Code.INVALID_PARAMETER, "Invalid URL: url="),
    ("frame-20MiB", [send_big(20 * 1024 * 1024)], Code.WEBSOCKET_ONERROR, "Invalid WebSocket frame: Message too big"),
    ("reserved-bits-frame", [send_raw(b"\xf1\x02{}")], Code.WEBSOCKET_ONERROR, "Invalid WebSocket frame: Reserved"),
    ("masked-server-frame", [send_raw(wsm.encode_frame(wsm.OP_TEXT, b'{"type":"ping"}', mask=True))],
     Code.WEBSOCKET_ONERROR, "Invalid WebSocket frame:"),
    ("unknown-opcode", [send_raw(b"\x83\x00")], Code.WEBSOCKET_ONERROR, "Invalid WebSocket frame:"),
    ("deep-json-array", [send(deep(200000))], Code.INTERNAL_ERROR, "Received a "),
    ("deep-json-in-typed-object", [send('{"type":"push","data":%s}' % deep(200000))], Code.INTERNAL_ERROR,
     "Received a "),
]

AFTER_OFFER_MALFORMED = [
    ("reoffer-garbage-sdp", [send({"type": "re-offer", "sdp": "garbage"})], Code.ICE_FAILED,
     "Failed to apply re-offer"),
    ("reoffer-without-sdp", [send({"type": "re-offer"})], Code.INTERNAL_ERROR, "Received a re-offer without"),
    ("non-json-after-offer", [send("}{")], Code.INTERNAL_ERROR, NOT_JSON),
    ("deep-push-after-offer", [send('{"type":"push","data":%s}' % deep(200000))], Code.INTERNAL_ERROR,
     "Received a "),
]


def run_malformed(make_server, make_client, prefix, steps):
    release = threading.Event()
    server = make_server(prefix + steps + [wait_event(release, 30)])
    conn, rec = make_client(server)
    conn.connect()
    return server, conn, rec, release


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_first_message(sora, make_server, make_client, case):
    _, steps, code, start = case
    server, conn, rec, release = run_malformed(make_server, make_client, [expect("connect")], steps)
    got_code, message = rec.wait_disconnect()
    release.set()
    assert (got_code, message[:len(start)]) == (code, start), message
    assert message.strip()
    assert rec.of("on_set_offer") == []
    if code == Code.ICE_FAILED:  # our error: the server is told, as the official SDK does
        session = server.wait_session()
        session.wait_message("disconnect", timeout=5)
        assert session.of_type("disconnect")[0].text == '{"type":"disconnect","reason":"INTERNAL-ERROR"}'
    assert_single_disconnect(rec)
    conn.disconnect()


@pytest.mark.parametrize("case", AFTER_OFFER_MALFORMED, ids=[c[0] for c in AFTER_OFFER_MALFORMED])
def test_malformed_after_offer(sora, make_server, make_client, case):
    _, steps, code, start = case
    server, conn, rec, release = run_malformed(make_server, make_client, AFTER_OFFER, steps)
    got_code, message = rec.wait_disconnect()
    release.set()
    assert (got_code, message[:len(start)]) == (code, start), message
    assert len(rec.of("on_notify")) == 1
    assert_single_disconnect(rec)


def test_offer_twice_second_is_ignored(sora, make_server, make_client):
    server = make_server(AFTER_OFFER + [offer(), push()])
    conn, rec = make_client(server)
    conn.connect()
    rec.wait("on_push")
    assert len(rec.of("on_set_offer")) == 1
    assert rec.of("on_disconnect") == []
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


def test_huge_valid_push_is_delivered(sora, make_server, make_client):
    blob = "x" * (8 * 1024 * 1024)
    server = make_server(AFTER_OFFER + [push({"blob": blob})])
    conn, rec = make_client(server)
    conn.connect()
    text = rec.wait("on_push")[0]
    assert json.loads(text)["data"]["blob"] == blob
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


def test_wide_offer_fields_are_ignored(sora, make_server, make_client):
    """Keys a real Sora adds (and junk) next to a valid offer do not matter."""
    extra = {"client_id": "cid", "bundle_id": "bid", "session_id": "sid", "metadata": {"a": [1, 2]},
             "simulcast": False, "spotlight": False, "multistream": True, "rpc_methods": ["x"],
             "encodings": "not-a-list", "junk": {"deep": [[[[1]]]]}}
    server = make_server([expect("connect"), offer(**extra), answer(), notify_created()])
    conn, rec = make_client(server)
    conn.connect()
    rec.wait("on_notify")
    assert json.loads(rec.of("on_set_offer")[0][0])["session_id"] == "sid"
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


def test_process_healthy_after_malformed_input(sora, make_server, make_client):
    for steps in ([send("nope")], [send_binary(b"\x00\xff")], [send_big(17 * 1024 * 1024)], [drop()]):
        server, conn, rec, release = run_malformed(make_server, make_client, [expect("connect")], steps)
        rec.wait_disconnect()
        release.set()
    assert_healthy(sora, make_server, make_client)


# --------------------------------------------------------------------------- property test

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16)

TYPES = ["offer", "re-offer", "update", "notify", "push", "ping", "pong", "switched", "candidate", "answer",
         "close", "disconnect", "connect", "req-stats", "stats", "", "OFFER", "x" * 300]

TYPED = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={"sdp": st.text(max_size=60) | JSON, "connection_id": st.text(max_size=30) | JSON,
              "config": st.fixed_dictionaries({}, optional={"iceServers": JSON}) | JSON,
              "data": JSON, "stats": JSON, "mid": JSON, "data_channels": JSON, "encodings": JSON,
              "event_type": st.text(max_size=20)})

# A real offer of the server-side Peer (VP8 + Opus recvonly), to be mutated line by line.
SDP_LINES = (
    "v=0|o=- 1412700707636827641 0 IN IP4 0.0.0.0|s=-|t=0 0|a=ice-options:trickle|a=group:BUNDLE video0 audio1|"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97|c=IN IP4 0.0.0.0|a=setup:actpass|a=ice-ufrag:UA3fvf+R2kYCLjMs4U8hLFBePn3vlXvi|"
    "a=ice-pwd:kmqdm/MqYr6Iro7WBi6zWTpiwRnNdAo8|a=rtcp-mux|a=rtcp-rsize|a=recvonly|a=rtpmap:96 VP8/90000|"
    "a=rtcp-fb:96 nack|a=rtcp-fb:96 nack pli|a=rtcp-fb:96 ccm fir|a=rtcp-fb:96 transport-cc|a=rtpmap:97 rtx/90000|"
    "a=fmtp:97 apt=96|a=mid:video0|a=fingerprint:sha-256 7D:7B:A2:25:21:C8:A1:3C:33:13:8D:1A:57:07:2B:AF:97:E4:D0:"
    "B8:0A:3A:07:4C:04:74:3A:3E:80:8B:28:22|a=rtcp-mux-only|a=candidate:1 1 UDP 2015364095 127.0.0.1 37987 typ host|"
    "m=audio 0 UDP/TLS/RTP/SAVPF 111|c=IN IP4 0.0.0.0|a=setup:actpass|a=ice-ufrag:UA3fvf+R2kYCLjMs4U8hLFBePn3vlXvi|"
    "a=ice-pwd:kmqdm/MqYr6Iro7WBi6zWTpiwRnNdAo8|a=bundle-only|a=rtcp-mux|a=rtcp-rsize|a=recvonly|"
    "a=rtpmap:111 OPUS/48000/2|a=rtcp-fb:111 transport-cc|a=mid:audio1|a=fingerprint:sha-256 7D:7B:A2:25:21:C8:A1:"
    "3C:33:13:8D:1A:57:07:2B:AF:97:E4:D0:B8:0A:3A:07:4C:04:74:3A:3E:80:8B:28:22|a=rtcp-mux-only").split("|")


def _mutate(edits):
    lines = list(SDP_LINES)
    for op, index, text in edits:
        i = index % len(lines) if lines else 0
        if op == "delete" and lines:
            del lines[i]
        elif op == "replace" and lines:
            lines[i] = text
        elif op == "insert":
            lines.insert(i, text)
        elif op == "truncate" and lines:
            lines[i] = lines[i][:len(text)]
    return "\r\n".join(lines) + "\r\n"


MUTATED_OFFERS = st.builds(
    lambda edits, extra: dict({"type": "offer", "sdp": _mutate(edits), "connection_id": "C" * 26,
                               "config": {"iceServers": []}}, **extra),
    st.lists(st.tuples(st.sampled_from(["delete", "replace", "insert", "truncate"]), st.integers(0, 60),
                       st.text(max_size=30)), max_size=4),
    st.dictionaries(st.sampled_from(["mid", "data_channels", "encodings", "simulcast", "metadata"]), JSON,
                    max_size=2))

FRAMES = st.one_of(
    JSON.map(lambda v: ("text", json.dumps(v))),
    TYPED.map(lambda v: ("text", json.dumps(v))),
    MUTATED_OFFERS.map(lambda v: ("text", json.dumps(v))),
    st.text(max_size=200).map(lambda t: ("text", t)),
    st.binary(max_size=200).map(lambda b: ("binary", b)),
)

# 200 examples take ~6 s on CPython; PyPy is ~2.5x slower per example (JIT warm-up), so it runs fewer.
FUZZ_EXAMPLES = int(os.environ.get("SORA_FUZZ_EXAMPLES",
                                   "120" if platform.python_implementation() == "PyPy" else "200"))

SENTINEL = "Succeeded to close WebSocket from server: ec=%s wscode=1000 wsreason=SENTINEL" % GRACEFUL


def _is_redirect(frame) -> bool:
    kind, payload = frame
    try:
        value = json.loads(payload)
    except (ValueError, TypeError, RecursionError):
        return False
    return isinstance(value, dict) and value.get("type") == "redirect"


def test_random_first_message(make_server):
    """Random JSON / text / bytes as the first server message, then close(1000, "SENTINEL").

    The client always ends with exactly one on_disconnect: the sentinel's (the message was
    ignored) or an error of its own; it never crashes or hangs, and the process stays healthy.
    """
    sora = sora_sdk.Sora()
    threads_before = threading.active_count()
    outcomes = {}
    try:
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(frame=FRAMES.filter(lambda f: not _is_redirect(f)))
        def check(frame):
            kind, payload = frame
            step = send(payload) if kind == "text" else send_binary(payload)
            server = ScriptedServer([expect("connect"), step, close(1000, "SENTINEL")])
            try:
                conn = sora.create_connection(signaling_urls=[server.url], role="sendonly", channel_id="fuzz",
                                              websocket_close_timeout=1, disconnect_wait_timeout=1)
                rec = Recorder(conn)
                conn.connect()
                code, message = rec.wait_disconnect(timeout=10)
                conn.disconnect()
                assert isinstance(message, str) and message
                assert len(rec.of("on_disconnect")) == 1
                if message != SENTINEL:
                    assert code in (Code.INTERNAL_ERROR, Code.ICE_FAILED, Code.INVALID_PARAMETER,
                                    Code.WEBSOCKET_ONERROR, Code.PEER_CONNECTION_STATE_FAILED), (code, message)
                outcomes[code] = outcomes.get(code, 0) + 1
            finally:
                server.stop()

        check()
    finally:
        sora.close()
    print("outcomes:", outcomes)
    assert outcomes, "no example ran"
    # no thread leak (server/reader/close helper threads all end)
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before + 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before + 10, threading.enumerate()
    # and the process still makes a normal connection
    fresh = sora_sdk.Sora()
    try:
        server = make_server()
        conn = fresh.create_connection(signaling_urls=[server.url], role="sendonly", channel_id="after-fuzz")
        rec = Recorder(conn)
        conn.connect()
        rec.wait("on_notify")
        conn.disconnect()
        assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]
    finally:
        fresh.close()
