"""Signaling flow of sora_sdk.SoraConnection against a scripted loopback server.

Covers signaling.md §§1-2, 4-6, 8-10, 13 (client-initiated end) and the lifetime
rules of api.md §§6, 11-12: what the client sends and in which order, what each
callback receives, how disconnect() ends, redirects, several signaling URLs.
Every wait is bounded; a stuck test is killed by the hang guard.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest

import sora_sdk
from sora_sdk import SoraSignalingErrorCode as Code
from sora_sdk.errors import SoraInvalidState

from scripted_server import (CALLBACKS, Recorder, answer, expect, hang_guard, ignore_disconnect, make_client,  # noqa: F401
                             make_server, notify_created, offer, ping, push, redirect, reoffer, send, sleep, sora,
                             wait_event)

pytestmark = pytest.mark.usefixtures("hang_guard")

DISCONNECT = '{"type":"disconnect","reason":"NO-ERROR"}'
WS_CLOSE_OK = "Succeeded to close WebSocket (DC signaling is not enabled)"
WS_CLOSE_TIMEOUT = "Failed to close WebSocket: ec=Operation canceled wscode=0 wsreason="
ALREADY = "Already disconnected. Please create a new connection with Sora.create_connection() to connect again."


def connect_text(sora, conn, redirect=False):
    identity = sora._identity
    return conn._options.connect_message(sora_client=identity["sora_client"], libwebrtc=identity["libwebrtc"],
                                         environment=identity["environment"], redirect=redirect)


def settle(seconds=0.3):
    time.sleep(seconds)


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met within %.1f s" % timeout
        time.sleep(0.02)


# --------------------------------------------------------------------------- normal flow

def test_normal_flow_messages_callbacks_and_disconnect(sora, make_server, make_client):
    release = threading.Event()
    server = make_server([
        expect("connect"),
        send({"type": "notify", "event_type": "connection.created", "connection_id": "EARLY"}),  # before offer
        send({"type": "push", "data": {"early": True}}),  # before offer: dropped too
        offer(),
        answer(),
        notify_created(),
        push({"n": 1}),
        ping(),
        ping(stats=True),
        wait_event(release),
    ])
    conn, rec = make_client(server, role="sendonly", channel_id="flow-channel", metadata={"k": "v"})
    conn.connect()
    notify_text = rec.wait("on_notify")[0]
    push_text = rec.wait("on_push")[0]
    session = server.wait_session()
    wait_until(lambda: len(session.of_type("pong")) >= 2)

    # connect is the first message, exactly ConnectionOptions.connect_message()
    assert session.messages[0].text == connect_text(sora, conn)
    assert session.messages[0].is_text
    assert session.messages[0].json["channel_id"] == "flow-channel"
    assert session.messages[0].json["metadata"] == {"k": "v"}
    assert "redirect" not in session.messages[0].json
    assert session.request.path == "/signaling"

    # offer -> answer -> candidates (bare candidate strings, no sdpMid / sdpMLineIndex)
    types = session.types()
    assert types[0] == "connect" and types[1] == "answer", types
    candidates = session.of_type("candidate")
    assert candidates, "no trickled candidate"
    for message in candidates:
        assert set(message.json) == {"type", "candidate"}
        assert message.json["candidate"].startswith("candidate:")
    answer_json = session.of_type("answer")[0].json
    assert set(answer_json) == {"type", "sdp"}
    assert "a=setup:active" in answer_json["sdp"]
    assert "a=candidate" not in answer_json["sdp"]
    assert all(m.is_text for m in session.messages)

    # on_set_offer got the offer text verbatim; the pre-offer notify/push were dropped
    offer_text = session.sent_texts('{"type":"offer"')[0]
    assert rec.of("on_set_offer") == [(offer_text,)]
    assert rec.of("on_notify") == [(notify_text,)]
    assert json.loads(notify_text)["connection_id"] == session.connection_id
    assert json.loads(push_text) == {"type": "push", "data": {"n": 1}}
    assert len(rec.of("on_push")) == 1
    names = rec.names()
    assert names.index("on_set_offer") < names.index("on_notify")

    # ping -> {"type":"pong"}; ping with stats -> pong with a stats list
    pongs = [m.json for m in session.of_type("pong")]
    assert {"type": "pong"} in pongs
    with_stats = [p for p in pongs if "stats" in p]
    assert len(with_stats) == 1
    stats = with_stats[0]["stats"]
    assert isinstance(stats, list) and stats
    assert all(isinstance(s, dict) and "type" in s and "id" in s and "timestamp" in s for s in stats)

    # on_signaling_message: connect, offer, answer, candidates — never ping/pong/notify/push
    sig = rec.signaling()
    assert sig[:3] == [("WEBSOCKET", "SENT", "connect"), ("WEBSOCKET", "RECEIVED", "offer"),
                       ("WEBSOCKET", "SENT", "answer")]
    assert set(sig[3:]) == {("WEBSOCKET", "SENT", "candidate")}
    sent_texts = [t for k, d, t in rec.of("on_signaling_message") if d.name == "SENT"]
    assert sent_texts[0] == session.messages[0].text
    assert rec.of("on_signaling_message")[1][2] == offer_text

    # disconnect(): NO-ERROR on WS, server closes 1000 TYPE-DISCONNECT; blocks until on_disconnect ran
    before = len(rec.events)
    started = time.monotonic()
    conn.disconnect()
    took = time.monotonic() - started
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]
    assert took < 2.0
    tail = rec.events[before:]
    assert [e.name for e in tail] == ["on_signaling_message", "on_ws_close", "on_disconnect"], tail
    assert tail[0].args[2] == DISCONNECT and tail[0].args[1].name == "SENT"
    assert tail[1].args == (1000, "TYPE-DISCONNECT")
    session.wait_end()
    assert session.messages[-1].text == DISCONNECT
    assert session.end == ("server", "close", 1000, "TYPE-DISCONNECT")
    release.set()

    # every callback ran on one thread, not the main thread
    threads = {e.thread for e in rec.events}
    assert len(threads) == 1
    assert threads.pop() is not threading.main_thread()

    settle()
    assert len(rec.of("on_disconnect")) == 1
    assert conn.connection_state == "closed"


def test_candidates_reach_server_and_ice_connects(sora, make_server, make_client):
    server = make_server()
    conn, rec = make_client(server, role="sendonly", video_source=sora.create_video_source(),
                            audio_source=sora.create_audio_source(1, 48000))
    conn.connect()
    rec.wait("on_notify")
    session = server.wait_session()
    wait_until(lambda: conn.ice_connection_state in ("connected", "completed"))
    assert session.candidates_added >= 1
    answer_sdp = session.of_type("answer")[0].json["sdp"]
    assert answer_sdp.count("a=sendonly") == 2  # video and audio: the client sends on both
    stats = json.loads(conn.get_stats())
    assert isinstance(stats, list) and any(s.get("type") == "transport" for s in stats)
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


@pytest.mark.parametrize("kind,reply", [("re-offer", "re-answer"), ("update", "update")])
def test_reoffer_is_answered_over_websocket(sora, make_server, make_client, kind, reply):
    server = make_server([expect("connect"), offer(), answer(), notify_created(), reoffer(kind)])
    conn, rec = make_client(server)
    conn.connect()
    session = server.wait_session()
    message = session.wait_message(reply)
    assert set(message.json) == {"type", "sdp"}
    assert message.json["sdp"].startswith("v=0")
    reoffer_text = session.sent_texts('{"type":"%s"' % kind)[0]
    wait_until(lambda: ("WEBSOCKET", "SENT", reply) in rec.signaling()[3:])
    sig = [s for s in rec.signaling() if s[2] != "candidate"]
    assert sig == [("WEBSOCKET", "SENT", "connect"), ("WEBSOCKET", "RECEIVED", "offer"),
                   ("WEBSOCKET", "SENT", "answer"), ("WEBSOCKET", "RECEIVED", kind), ("WEBSOCKET", "SENT", reply)]
    received = [t for k, d, t in rec.of("on_signaling_message") if d.name == "RECEIVED"]
    assert received[-1] == reoffer_text
    assert rec.of("on_disconnect") == []
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


def test_unknown_message_types_are_ignored(sora, make_server, make_client):
    server = make_server([expect("connect"), send({"type": "no-such-type", "x": 1}), offer(), answer(),
                          send({"type": "another-unknown"}), send({"type": "pong"}), send({"type": "candidate",
                          "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}), notify_created()])
    conn, rec = make_client(server)
    conn.connect()
    rec.wait("on_notify")
    settle(0.2)
    assert rec.of("on_disconnect") == []
    assert rec.signaling()[:3] == [("WEBSOCKET", "SENT", "connect"), ("WEBSOCKET", "RECEIVED", "offer"),
                                   ("WEBSOCKET", "SENT", "answer")]
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


# --------------------------------------------------------------------------- client-initiated end

def test_server_ignores_disconnect_close_timeout(sora, make_server, make_client):
    server = make_server([ignore_disconnect()] + [expect("connect"), offer(), answer(), notify_created()])
    conn, rec = make_client(server, websocket_close_timeout=1)
    conn.connect()
    rec.wait("on_notify")
    started = time.monotonic()
    conn.disconnect()
    took = time.monotonic() - started
    assert 0.8 <= took <= 3.0, took
    assert rec.of("on_ws_close") == [(4999, "DISCONNECT-WAIT-TIMEOUT-ERROR")]
    assert rec.of("on_disconnect") == [(Code.CLOSE_FAILED, WS_CLOSE_TIMEOUT)]
    names = rec.names()
    assert names[-2:] == ["on_ws_close", "on_disconnect"]
    session = server.wait_session()
    assert session.messages[-1].text == DISCONNECT
    session.wait_end(5)  # the client dropped the socket after giving up
    settle()
    assert len(rec.of("on_disconnect")) == 1


def test_disconnect_while_connecting(sora, make_server, make_client):
    release = threading.Event()
    server = make_server([expect("connect"), wait_event(release)])  # never sends an offer
    conn, rec = make_client(server)
    conn.connect()
    session = server.wait_session()
    session.wait_message("connect")
    started = time.monotonic()
    conn.disconnect()
    assert time.monotonic() - started < 2.0
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, "Close was called in connecting")]
    assert session.wait_end(5)[0] in ("close", "eof")
    release.set()


def test_disconnect_before_the_websocket_opens(sora, make_server, make_client):
    server = make_server(handshake="silent")
    conn, rec = make_client(server, websocket_connection_timeout=5)
    conn.connect()
    server.wait_tcp()
    started = time.monotonic()
    conn.disconnect()
    assert time.monotonic() - started < 2.0
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, "Close was called in connecting")]
    settle(0.2)
    assert len(rec.of("on_disconnect")) == 1


# --------------------------------------------------------------------------- redirect

def test_redirect(sora, make_server, make_client):
    target = make_server()
    first = make_server([expect("connect"), redirect(target)])
    conn, rec = make_client(first, user_agent="scripted-agent")
    conn.connect()
    rec.wait("on_notify")
    a, b = first.wait_session(), target.wait_session()
    assert a.messages[0].text == connect_text(sora, conn)
    assert b.messages[0].text == connect_text(sora, conn, redirect=True)
    assert b.messages[0].json["redirect"] is True
    assert rec.of("on_ws_close") == [(1000, "SELF-CLOSED")]
    sig = [s for s in rec.signaling() if s[2] != "candidate"]
    assert sig == [("WEBSOCKET", "SENT", "connect"), ("WEBSOCKET", "RECEIVED", "redirect"),
                   ("WEBSOCKET", "SENT", "connect"), ("WEBSOCKET", "RECEIVED", "offer"),
                   ("WEBSOCKET", "SENT", "answer")]
    names = rec.names()
    assert names.index("on_ws_close") < names.index("on_set_offer")
    assert b.of_type("answer")
    assert a.wait_end(5)
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]
    assert b.messages[-1].text == DISCONNECT
    assert rec.of("on_ws_close")[-1] == (1000, "TYPE-DISCONNECT")


def test_redirect_to_dead_port(sora, make_server, make_client):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = "ws://127.0.0.1:%d/signaling" % probe.getsockname()[1]
    probe.close()
    first = make_server([expect("connect"), redirect(dead)])
    conn, rec = make_client(first)
    conn.connect()
    code, message = rec.wait_disconnect()
    assert code == Code.WEBSOCKET_HANDSHAKE_FAILED
    assert message == "Failed Websocket handshake in redirecting: last_ec=Connection refused last_url=%s" % dead
    assert rec.of("on_ws_close") == [(1000, "SELF-CLOSED")]


@pytest.mark.parametrize("location", ["http://127.0.0.1:1/signaling", ""])
def test_redirect_to_invalid_url(sora, make_server, make_client, location):
    first = make_server([expect("connect"), redirect(location)])
    conn, rec = make_client(first)
    conn.connect()
    code, message = rec.wait_disconnect()
    assert code == Code.INVALID_PARAMETER
    assert message.startswith("Invalid URL: url=")
    if location:
        assert message == "Invalid URL: url=" + location


# --------------------------------------------------------------------------- several signaling URLs

def test_two_urls_one_dead(sora, make_server, make_client):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = "ws://127.0.0.1:%d/signaling" % probe.getsockname()[1]
    probe.close()
    live = make_server()
    conn, rec = make_client([dead, live])
    conn.connect()
    rec.wait("on_notify")
    assert live.wait_session().messages[0].type == "connect"
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


def test_two_live_urls_exactly_one_gets_connect(sora, make_server, make_client):
    servers = [make_server(), make_server()]
    conn, rec = make_client(servers)
    conn.connect()
    rec.wait("on_notify")
    sessions = [s.wait_session() for s in servers]
    with_connect = [s for s in sessions if s.of_type("connect")]
    assert len(with_connect) == 1
    loser = [s for s in sessions if s is not with_connect[0]][0]
    assert loser.wait_end(5) == ("close", 1000, "")
    assert loser.messages == []
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


# --------------------------------------------------------------------------- lifetime

def test_disconnect_without_connect_returns_at_once(sora, make_client):
    conn, rec = make_client("ws://127.0.0.1:1/signaling")
    started = time.monotonic()
    conn.disconnect()
    conn.disconnect()
    assert time.monotonic() - started < 0.5
    settle(0.2)
    assert rec.events == []
    with pytest.raises(RuntimeError) as info:
        conn.connect()
    assert str(info.value) == ALREADY


def test_connect_twice_is_a_noop(sora, make_server, make_client):
    server = make_server()
    conn, rec = make_client(server)
    conn.connect()
    conn.connect()
    rec.wait("on_notify")
    conn.connect()
    settle(0.2)
    assert server.tcp_accepts == 1
    assert len(server.sessions) == 1
    assert server.sessions[0].types().count("connect") == 1
    assert len(rec.of("on_set_offer")) == 1


def test_after_disconnect(sora, make_server, make_client):
    server = make_server()
    conn, rec = make_client(server)
    assert conn.get_stats() == "[]"  # before connect
    assert conn.send_data_channel("#x", b"a") is False
    conn.connect()
    rec.wait("on_notify")
    conn.disconnect()
    conn.disconnect()  # twice is fine
    assert len(rec.of("on_disconnect")) == 1
    with pytest.raises(RuntimeError) as info:
        conn.connect()
    assert str(info.value) == ALREADY
    with pytest.raises(SoraInvalidState):
        conn.get_stats()
    with pytest.raises(SoraInvalidState):
        conn.send_data_channel("#x", b"a")
    settle(0.2)
    assert len(rec.of("on_disconnect")) == 1


def test_sora_close_disconnects_live_connections(make_server):
    sora = sora_sdk.Sora()
    try:
        servers = [make_server(), make_server()]
        pairs = []
        for server in servers:
            conn = sora.create_connection(signaling_urls=[server.url], role="sendonly", channel_id="c",
                                          websocket_close_timeout=1)
            rec = Recorder(conn)
            conn.connect()
            pairs.append((conn, rec))
        for _, rec in pairs:
            rec.wait("on_notify")
        started = time.monotonic()
        sora.close()
        assert time.monotonic() - started < 5.0
        for conn, rec in pairs:
            assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]
            conn.disconnect()  # no-op now
        for server in servers:
            assert server.wait_session().of_type("disconnect")
        sora.close()  # idempotent
    finally:
        sora.close()


def test_raising_callback_is_logged_and_connection_continues(sora, make_server, make_client, caplog):
    def boom(*args):
        raise ValueError("boom from on_set_offer")

    server = make_server()
    conn, rec = make_client(server, hooks={"on_set_offer": boom, "on_signaling_message": boom})
    with caplog.at_level(logging.ERROR, logger="sora_sdk"):
        conn.connect()
        rec.wait("on_notify")
        session = server.wait_session()
        assert session.of_type("answer")
    messages = [r.getMessage() for r in caplog.records]
    assert any("on_set_offer" in m for m in messages), messages
    assert any(r.exc_info and "boom from on_set_offer" in str(r.exc_info[1]) for r in caplog.records)
    assert rec.of("on_disconnect") == []
    conn.disconnect()
    assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)]


def test_disconnect_from_inside_callbacks_does_not_deadlock(sora, make_server, make_client):
    server = make_server()
    returned = threading.Event()
    holder = {}

    def on_notify(text):
        holder["conn"].disconnect()
        returned.set()

    def on_disconnect(code, message):
        holder["conn"].disconnect()  # re-entrant no-op

    conn, rec = make_client(server, hooks={"on_notify": on_notify, "on_disconnect": on_disconnect})
    holder["conn"] = conn
    conn.connect()
    assert returned.wait(10)
    assert rec.wait_disconnect() == (Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)
    assert server.wait_session().of_type("disconnect")
    conn.disconnect()


def test_disconnect_from_inside_on_set_offer(sora, make_server, make_client):
    server = make_server([expect("connect"), offer()])
    holder = {}
    conn, rec = make_client(server, hooks={"on_set_offer": lambda text: holder["conn"].disconnect()})
    holder["conn"] = conn
    conn.connect()
    assert rec.wait_disconnect() == (Code.CLOSE_SUCCEEDED, WS_CLOSE_OK)
    session = server.wait_session()
    session.wait_end()
    assert session.types()[0] == "connect"
    assert session.types()[-1] == "disconnect"
    assert "answer" not in session.types()


def test_callback_setters(sora, make_client):
    conn, _ = make_client("ws://127.0.0.1:1/signaling")
    for name in CALLBACKS:
        fresh = sora.create_connection(signaling_urls=["ws://127.0.0.1:1/s"], role="sendonly", channel_id="c")
        assert getattr(fresh, name) is None
        for bad in (None, 42, "callable?", b"x"):
            with pytest.raises(TypeError):
                setattr(fresh, name, bad)
        assert getattr(fresh, name) is None

        def fn(*args):
            pass
        setattr(fresh, name, fn)
        assert getattr(fresh, name) is fn
        with pytest.raises(TypeError):
            setattr(fresh, name, None)
        assert getattr(fresh, name) is fn
        fresh.disconnect()


def test_callbacks_run_on_one_non_main_thread(sora, make_server, make_client):
    server = make_server([expect("connect"), offer(), answer(), notify_created(), push(), sleep(0.1),
                          send({"type": "ping"})])
    conn, rec = make_client(server)
    conn.connect()
    rec.wait("on_push")
    conn.disconnect()
    threads = {e.thread for e in rec.events}
    assert len(threads) == 1
    thread = threads.pop()
    assert thread is not threading.main_thread()
    assert thread.ident != threading.get_ident()
    assert {"on_signaling_message", "on_set_offer", "on_notify", "on_push", "on_ws_close",
            "on_disconnect"} <= set(rec.names())
