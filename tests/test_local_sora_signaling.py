"""Signaling tests of the local Sora server (sora_sdk.testing).

The client side is played with the SDK's WebSocket client and a real
webrtcbin answerer (sora_sdk.peer.Peer), all over loopback.
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

import pytest

from sora_sdk._ffi import check, ffi, lib
from sora_sdk.context import Context
from sora_sdk.peer import Peer
from sora_sdk.testing import LocalSora, encode_jwt
from sora_sdk.websocket import WebSocketClient, WebSocketClosed, WebSocketError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 10.0

# Every wait below is bounded; pytest-timeout (when installed) is a second guard.
pytestmark = [pytest.mark.timeout(60)] if importlib.util.find_spec("pytest_timeout") else []


@pytest.fixture(scope="module")
def ctx():
    context = Context()
    yield context
    context.close()


@pytest.fixture
def sora():
    server = LocalSora()
    yield server
    server.close()


class Client:
    """A test client: WebSocket + webrtcbin answerer, all events queued."""

    def __init__(self, ctx, url):
        self.ctx = ctx
        self.ws = WebSocketClient.connect(url, timeout=5.0)
        self.messages = queue.Queue()
        self.closed = threading.Event()
        self.close_info = None
        self.peer = None
        self.offer = None
        self.dc_ids = {}
        self.dc_opened = queue.Queue()
        self.dc_messages = queue.Queue()
        self.pending = []
        self._candidate_lock = threading.Lock()
        self._answered = False
        self._early = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while True:
            try:
                is_text, payload = self.ws.recv()
            except WebSocketClosed as exc:
                self.close_info = (exc.code, exc.reason)
                break
            except WebSocketError as exc:
                self.close_info = (0, str(exc))
                break
            self.messages.put(json.loads(payload.decode("utf-8")))
        self.closed.set()

    # ---- signaling ----
    def send(self, message):
        self.ws.send_text(json.dumps(message, separators=(",", ":")))

    def next_message(self, timeout=TIMEOUT, skip=("ping",)):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no message within %.1f s" % timeout)
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if message.get("type") in skip:
                continue
            return message

    def wait_type(self, kind, timeout=TIMEOUT, **match):
        deadline = time.monotonic() + timeout
        while True:
            message = self.next_message(max(deadline - time.monotonic(), 0.01), skip=())
            if message.get("type") == kind and all(message.get(k) == v for k, v in match.items()):
                return message
            self.pending.append(message)

    def wait_closed(self, timeout=TIMEOUT):
        assert self.closed.wait(timeout), "the server did not close the WebSocket"
        return self.close_info

    def connect(self, channel_id, role="sendonly", **fields):
        message = {"type": "connect", "role": role, "channel_id": channel_id}
        message.update(fields)
        self.send(message)
        self.offer = self.wait_type("offer")
        return self.offer

    def answer(self, send=False):
        """Answer the offer; `send` attaches idle sources so the answer is sendonly (as real senders)."""
        self.peer = Peer(self.ctx, on_event=self._on_peer_event)
        self.peer.set_remote_description("offer", self.offer["sdp"])
        if send:
            for mline, (kind, codec, payload_type) in enumerate(sdp_codecs(self.offer["sdp"])):
                if kind == "video":
                    out = ffi.new("sora_video_source **")
                    check(lib.sora_video_source_create(self.ctx.ptr, out))
                    self.peer.attach_video_source(out[0], mline, codec, payload_type)
                elif kind == "audio":
                    out = ffi.new("sora_audio_source **")
                    check(lib.sora_audio_source_create(self.ctx.ptr, 1, 48000, out))
                    self.peer.attach_audio_source(out[0], mline, codec, payload_type)
                else:
                    continue
                self.peer.set_direction(mline, "sendonly")
        sdp = self.peer.create_answer()
        with self._candidate_lock:
            # Like Sora clients: the answer first, then the trickled candidates.
            self.send({"type": "answer", "sdp": sdp})
            self._answered = True
            early, self._early = self._early, []
        for candidate in early:
            self.send({"type": "candidate", "candidate": candidate})

    def _on_peer_event(self, event):
        if event.name == "ice-candidate":
            candidate = event.str0
            if candidate.startswith("a="):
                candidate = candidate[2:]
            with self._candidate_lock:
                if not self._answered:
                    self._early.append(candidate)
                    return
            try:
                self.send({"type": "candidate", "candidate": candidate})
            except WebSocketError:
                pass
        elif event.name == "data-channel-open":
            self.dc_ids[event.str0] = event.i0
            self.dc_opened.put(event.str0)
        elif event.name == "data-channel-message":
            self.dc_messages.put((event.str0, event.data))

    def wait_connected(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while self.peer.connection_state != "connected":
            assert time.monotonic() < deadline, "peer state %s" % self.peer.connection_state
            time.sleep(0.02)

    def wait_channels_open(self, labels, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not set(labels) <= set(self.dc_ids):
            assert time.monotonic() < deadline, "open: %s" % sorted(self.dc_ids)
            time.sleep(0.02)

    def dc_send(self, label, data):
        self.peer.send_data(self.dc_ids[label], data, True)

    def dc_wait(self, label, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no message on %s" % label
            try:
                got_label, data = self.dc_messages.get(timeout=left)
            except queue.Empty:
                continue
            if got_label == label:
                return data

    def dc_wait_json(self, label, kind, timeout=TIMEOUT, compressed=False, **match):
        deadline = time.monotonic() + timeout
        while True:
            data = self.dc_wait(label, max(deadline - time.monotonic(), 0.01))
            message = json.loads(zlib.decompress(data) if compressed else data)
            if message.get("type") == kind and all(message.get(k) == v for k, v in match.items()):
                return message

    def close(self):
        self.ws.abort()
        if self.peer is not None:
            self.peer.close()


@pytest.fixture
def clients(ctx):
    made = []

    def make(url):
        client = Client(ctx, url)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def join(client, channel_id, role="sendonly", **fields):
    offer = client.connect(channel_id, role, **fields)
    client.answer()
    created = client.wait_type("notify", event_type="connection.created",
                               connection_id=offer["connection_id"])
    return offer, created


def api(sora, action, body):
    request = urllib.request.Request(sora.api_url, data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"x-sora-target": "Sora_20151104." + action,
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def sdp_codecs(sdp):
    """(kind, first codec name, its payload type) per m-line."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            parts = line[2:].split()
            out.append([parts[0], None, int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None])
        elif line.startswith("a=rtpmap:") and out and out[-1][1] is None:
            pt, _, rest = line[9:].partition(" ")
            if int(pt) == out[-1][2]:
                out[-1][1] = rest.split("/")[0].upper()
    return [tuple(entry) for entry in out]


def sdp_kinds(sdp):
    return [line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")]


# ---------------------------------------------------------------------------


def test_offer_answer_ice_and_disconnect(sora, clients):
    client = clients(sora.signaling_url)
    offer = client.connect("ch-basic", "sendonly", metadata={"m": 1}, signaling_notify_metadata={"n": 2},
                           video={"codec_type": "VP8"})
    cid = offer["connection_id"]
    assert len(cid) == 26 and cid.isalnum() and cid.upper() == cid
    assert offer["client_id"] == cid and offer["bundle_id"] == cid
    assert offer["channel_id"] == "ch-basic"
    assert len(offer["session_id"]) == 26
    assert offer["config"] == {"iceServers": [], "iceTransportPolicy": "all"}
    assert offer["audio"] is True and offer["video"] is True and offer["simulcast"] is False
    assert "data_channels" not in offer
    sdp = offer["sdp"]
    assert sdp_kinds(sdp) == ["audio", "video"]
    assert "a=setup:actpass" in sdp and "a=group:BUNDLE" in sdp
    assert "VP8/90000" in sdp and "a=rtpmap:111 opus/48000/2" in sdp and "OPUS" not in sdp
    assert "a=recvonly" in sdp and "127.0.0.1" in sdp and "a=candidate:" in sdp
    mids = [line[6:] for line in sdp.splitlines() if line.startswith("a=mid:")]
    assert offer["mid"] == {"audio": mids[0], "video": mids[1]}

    client.answer(send=True)
    created = client.wait_type("notify", event_type="connection.created", connection_id=cid)
    assert created["role"] == "sendonly"
    assert created["channel_connections"] == 1
    assert created["channel_sendonly_connections"] == 1
    assert created["channel_recvonly_connections"] == 0
    assert created["channel_sendrecv_connections"] == 0
    assert created["session_id"] == offer["session_id"]
    assert created["metadata"] == {"n": 2} and created["authn_metadata"] == {"m": 1}
    assert created["turn_transport_type"] == "udp" and created["timestamp"].endswith("Z")
    assert created["data"] == [{"connection_id": cid, "client_id": cid, "bundle_id": cid,
                                "role": "sendonly", "metadata": {"n": 2}}]
    client.wait_connected()

    listed = sora.wait_connections("ch-basic", 1)
    assert listed[0]["connection_id"] == cid and listed[0]["video_codec_type"] == "VP8"
    assert isinstance(sora.stats(cid), list)

    client.send({"type": "disconnect", "reason": "NO-ERROR"})
    assert client.wait_closed() == (1000, "TYPE-DISCONNECT")
    sora.wait_connections("ch-basic", 0)


def test_codecs_roles_and_ids(sora, clients):
    client = clients(sora.signaling_url)
    offer = client.connect("ch-codec", "recvonly", client_id="cid", bundle_id="bid",
                           video={"codec_type": "H264"}, audio=False)
    assert offer["client_id"] == "cid" and offer["bundle_id"] == "bid"
    assert offer["audio"] is False and sdp_kinds(offer["sdp"]) == ["video"]
    assert "H264/90000" in offer["sdp"]
    # A recvonly client's own placeholder m-line is sendonly with the client's own
    # connection id as msid stream (without a=msid the official SDK aborts).
    assert "a=sendonly" in offer["sdp"]
    assert "a=msid:%s " % offer["connection_id"] in offer["sdp"]
    assert list(offer["mid"]) == ["video"]

    default = clients(sora.signaling_url)
    offer = default.connect("ch-codec", "sendrecv")
    assert "VP9/90000" in offer["sdp"]  # Sora's default codec
    av1 = clients(sora.signaling_url)
    assert "AV1/90000" in av1.connect("ch-codec", "sendonly", video={"codec_type": "AV1"})["sdp"]
    novideo = clients(sora.signaling_url)
    offer = novideo.connect("ch-codec", "sendonly", video=False)
    assert sdp_kinds(offer["sdp"]) == ["audio"] and list(offer["mid"]) == ["audio"]


def test_two_clients_see_each_other(sora, clients):
    a = clients(sora.signaling_url)
    b = clients(sora.signaling_url)
    offer_a, _ = join(a, "ch-two", "sendonly")
    offer_b, created_b = join(b, "ch-two", "recvonly")
    ids = [entry["connection_id"] for entry in created_b["data"]]
    assert ids == [offer_a["connection_id"], offer_b["connection_id"]]
    assert created_b["channel_connections"] == 2
    assert created_b["channel_recvonly_connections"] == 1
    seen = a.wait_type("notify", event_type="connection.created", connection_id=offer_b["connection_id"])
    assert seen["role"] == "recvonly" and "data" not in seen and seen["channel_connections"] == 2
    b.wait_connected()  # the server's sendonly m-lines complete ICE/DTLS with a receiver
    assert {c["connection_id"] for c in sora.connections("ch-two")} == {offer_a["connection_id"],
                                                                       offer_b["connection_id"]}
    b.send({"type": "disconnect", "reason": "NO-ERROR"})
    assert b.wait_closed() == (1000, "TYPE-DISCONNECT")
    gone = a.wait_type("notify", event_type="connection.destroyed", connection_id=offer_b["connection_id"])
    assert gone["channel_connections"] == 1 and gone["channel_recvonly_connections"] == 0
    # A client that just drops its socket is destroyed too.
    a.close()
    sora.wait_connections("ch-two", 0)


def test_rest_api(sora, clients):
    client = clients(sora.signaling_url)
    offer, _ = join(client, "ch-api", "sendrecv")
    cid = offer["connection_id"]

    status, listed = api(sora, "ListChannelConnections", {"channel_id": "ch-api"})
    assert status == 200 and [c["connection_id"] for c in listed] == [cid]
    status, body = api(sora, "PushChannel", {"channel_id": "ch-api", "data": {"hello": "world"}})
    assert status == 200
    assert client.wait_type("push")["data"] == {"hello": "world"}
    status, body = api(sora, "PushConnection", {"channel_id": "ch-api", "connection_id": cid, "data": {"x": 1}})
    assert status == 200 and client.wait_type("push")["data"] == {"x": 1}
    assert api(sora, "RequestKeyFrame", {"channel_id": "ch-api", "connection_id": cid})[0] == 200
    status, stats = api(sora, "GetStatsConnection", {"channel_id": "ch-api", "connection_id": cid})
    assert status == 200 and isinstance(stats, list)
    assert api(sora, "DisconnectConnection", {"channel_id": "ch-api", "connection_id": "X" * 26})[0] == 404
    assert api(sora, "NoSuchAction", {})[0] == 400
    assert api(sora, "PushChannel", {"channel_id": "ch-api"})[0] == 400

    status, body = api(sora, "DisconnectConnection", {"channel_id": "ch-api", "connection_id": cid})
    assert status == 200
    assert client.wait_closed() == (1000, "DISCONNECTED-API")
    sora.wait_connections("ch-api", 0)


def test_jwt_authentication(ctx, clients):
    secret = "s3cret"
    with LocalSora(secret=secret) as sora:
        good = encode_jwt({"channel_id": "ch-jwt", "exp": time.time() + 60, "video_codec_type": "VP8"}, secret)
        client = clients(sora.signaling_url)
        offer = client.connect("ch-jwt", "sendonly", metadata={"access_token": good})
        assert "VP8/90000" in offer["sdp"]

        cases = [
            {"access_token": encode_jwt({"channel_id": "ch-jwt"}, "wrong")},
            {"access_token": encode_jwt({"channel_id": "other"}, secret)},
            {"access_token": encode_jwt({"channel_id": "ch-jwt", "exp": time.time() - 1}, secret)},
            {"access_token": "not-a-jwt"},
            {"a": 1},
            None,
        ]
        for metadata in cases:
            bad = clients(sora.signaling_url)
            message = {"type": "connect", "role": "sendonly", "channel_id": "ch-jwt"}
            if metadata is not None:
                message["metadata"] = metadata
            bad.send(message)
            assert bad.wait_closed() == (4001, "AUTHZ-FAILED"), metadata
            assert bad.messages.empty()

        token = encode_jwt({"channel_id": "ch-jwt", "video": False, "connection_lifetime": 1}, secret)
        short = clients(sora.signaling_url)
        offer = short.connect("ch-jwt", "sendonly", metadata={"access_token": token})
        assert offer["video"] is False and sdp_kinds(offer["sdp"]) == ["audio"]
        short.answer()
        assert short.wait_closed() == (1000, "LIFETIME-EXPIRED")


def test_auth_hook(ctx, clients):
    def hook(connect):
        if connect.get("metadata") == {"deny": True}:
            raise PermissionError("denied")
        return {"video_codec_type": "AV1", "metadata": {"granted": True}}

    with LocalSora(auth_hook=hook) as sora:
        ok = clients(sora.signaling_url)
        offer = ok.connect("ch-hook", "sendonly")
        assert "AV1/90000" in offer["sdp"] and offer["metadata"] == {"granted": True}
        denied = clients(sora.signaling_url)
        denied.send({"type": "connect", "role": "sendonly", "channel_id": "ch-hook", "metadata": {"deny": True}})
        assert denied.wait_closed() == (4001, "AUTHZ-FAILED")


@pytest.mark.parametrize("payload, reason", [
    ("not json", "INVALID-JSON"),
    ('{"role":"sendonly","channel_id":"x"}', "MISSING-TYPE"),
    ('[1,2]', "MISSING-TYPE"),
    ('{"type":"answer","sdp":""}', "UNEXPECTED-TYPE"),
    ('{"type":"connect","role":"publisher","channel_id":"x"}', "INVALID-ROLE"),
    ('{"type":"connect","role":"sendonly","channel_id":""}', "INVALID-CHANNEL-ID"),
    ('{"type":"connect","role":"sendonly","channel_id":5}', "INVALID-CHANNEL-ID"),
    ('{"type":"connect","role":"sendonly","channel_id":"x","video":{"codec_type":"MPEG2"}}',
     "INVALID-VIDEO-CODEC-TYPE"),
    ('{"type":"connect","role":"recvonly","channel_id":"x","audio":false,"video":false}', "INVALID-AUDIO-VIDEO"),
    ('{"type":"connect","role":"sendonly","channel_id":"x","data_channel_signaling":true,'
     '"data_channels":[{"label":"nohash","direction":"sendonly"}]}', "INVALID-DATA-CHANNEL-LABEL"),
])
def test_bad_first_message(sora, clients, payload, reason):
    client = clients(sora.signaling_url)
    client.ws.send_text(payload)
    code, got = client.wait_closed()
    assert 4000 <= code < 5000 and got == reason
    assert client.messages.empty()


def test_datachannel_signaling_and_relay(sora, clients):
    a = clients(sora.signaling_url)
    b = clients(sora.signaling_url)
    dcs_a = [{"label": "#chat", "direction": "sendrecv"},
             {"label": "#zip", "direction": "sendonly", "compress": True}]
    dcs_b = [{"label": "#chat", "direction": "sendrecv", "header": [{"type": "sender_connection_id"}]},
             {"label": "#zip", "direction": "recvonly", "compress": True}]
    offer_a = a.connect("ch-dc", "sendrecv", data_channel_signaling=True, ignore_disconnect_websocket=False,
                        data_channels=dcs_a)
    labels = [(d["label"], d["direction"], d["compress"]) for d in offer_a["data_channels"]]
    assert labels == [("signaling", "sendrecv", False), ("notify", "sendonly", False),
                      ("push", "sendonly", False), ("stats", "sendrecv", False),
                      ("#chat", "sendrecv", False), ("#zip", "sendonly", True)]
    assert "m=application" in offer_a["sdp"] and offer_a["data_channel_signaling"] is True
    a.answer()
    a.wait_type("notify", event_type="connection.created", connection_id=offer_a["connection_id"])
    assert a.wait_type("switched") == {"type": "switched", "ignore_disconnect_websocket": False}
    a.wait_channels_open(["signaling", "notify", "push", "stats", "#chat", "#zip"])

    offer_b, _ = join(b, "ch-dc", "recvonly", data_channel_signaling=True, data_channels=dcs_b)
    b.wait_type("switched")
    b.wait_channels_open(["signaling", "notify", "#chat", "#zip"])
    # After the switch, A hears about B on the notify DataChannel.
    notify = a.dc_wait_json("notify", "notify", event_type="connection.created",
                            connection_id=offer_b["connection_id"])
    assert notify["channel_connections"] == 2

    a.dc_send("#chat", b"hello")
    got = b.dc_wait("#chat")
    assert got[:26] == offer_a["connection_id"].encode() and got[26:] == b"hello"
    b.dc_send("#chat", b"back")
    assert a.dc_wait("#chat") == b"back"  # A asked for no header
    a.dc_send("#zip", zlib.compress(b"squeezed"))
    assert zlib.decompress(b.dc_wait("#zip")) == b"squeezed"

    sora.push("ch-dc", {"p": 1})
    assert a.dc_wait_json("push", "push")["data"] == {"p": 1}

    # Disconnect over the signaling DataChannel: the server closes the WebSocket.
    b.dc_send("signaling", json.dumps({"type": "disconnect", "reason": "NO-ERROR"}).encode())
    assert b.wait_closed() == (1000, "TYPE-DISCONNECT")
    a.dc_wait_json("notify", "notify", event_type="connection.destroyed", connection_id=offer_b["connection_id"])

    # Server-initiated end once switched: a close message on the signaling DataChannel too.
    sora.disconnect(offer_a["connection_id"])
    close = a.dc_wait_json("signaling", "close")
    assert close == {"type": "close", "code": 1000, "reason": "DISCONNECTED-API"}
    assert a.wait_closed() == (1000, "DISCONNECTED-API")


def test_ignore_disconnect_websocket(sora, clients):
    client = clients(sora.signaling_url)
    offer, _ = join(client, "ch-ignore", "sendonly", data_channel_signaling=True,
                    ignore_disconnect_websocket=True)
    assert client.wait_type("switched")["ignore_disconnect_websocket"] is True
    client.wait_channels_open(["signaling", "notify", "push", "stats"])
    client.ws.abort()  # as the official SDK does after `switched`
    time.sleep(0.3)
    assert [c["connection_id"] for c in sora.connections("ch-ignore")] == [offer["connection_id"]]
    sora.push("ch-ignore", {"still": "here"})
    assert client.dc_wait_json("push", "push")["data"] == {"still": "here"}
    client.dc_send("signaling", json.dumps({"type": "disconnect", "reason": "NO-ERROR"}).encode())
    sora.wait_connections("ch-ignore", 0)


def test_compressed_signaling_channel(ctx, clients):
    with LocalSora(compress_labels=("signaling", "notify")) as sora:
        a = clients(sora.signaling_url)
        b = clients(sora.signaling_url)
        offer_a, _ = join(a, "ch-z", "sendonly", data_channel_signaling=True)
        compress = {d["label"]: d["compress"] for d in offer_a["data_channels"]}
        assert compress == {"signaling": True, "notify": True, "push": False, "stats": False}
        a.wait_type("switched")
        a.wait_channels_open(["signaling", "notify"])
        offer_b, _ = join(b, "ch-z", "recvonly")
        a.dc_wait_json("notify", "notify", compressed=True, event_type="connection.created",
                       connection_id=offer_b["connection_id"])
        a.dc_send("signaling", zlib.compress(b'{"type":"disconnect","reason":"NO-ERROR"}'))
        assert a.wait_closed() == (1000, "TYPE-DISCONNECT")
        b.wait_type("notify", event_type="connection.destroyed", connection_id=offer_a["connection_id"])


def test_redirect_and_ping(ctx, clients):
    with LocalSora(ping_interval=0.2) as target, LocalSora(redirect_to=target.signaling_url) as front:
        client = clients(front.signaling_url)
        client.send({"type": "connect", "role": "sendonly", "channel_id": "ch-r"})
        assert client.next_message() == {"type": "redirect", "location": target.signaling_url}
        assert client.wait_closed()[0] == 1000

        again = clients(target.signaling_url)
        offer = again.connect("ch-r", "sendonly", redirect=True)
        assert offer["channel_id"] == "ch-r"
        assert again.wait_type("ping") == {"type": "ping", "stats": False}
        again.send({"type": "pong"})


def test_server_close_disconnects_clients(ctx, clients):
    sora = LocalSora()
    client = clients(sora.signaling_url)
    join(client, "ch-close", "sendonly")
    idle = socket.create_connection(("127.0.0.1", sora.port), timeout=5.0)  # never sends a request
    try:
        started = time.monotonic()
        sora.close()
        assert client.wait_closed() == (1001, "SHUTDOWN")
        assert time.monotonic() - started < 5
        assert idle.recv(1) == b""
    finally:
        idle.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("local-sora")]


def test_http_errors(sora):
    try:
        urllib.request.urlopen(sora.api_url, timeout=TIMEOUT)
        pytest.fail("GET should be refused")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405 and json.loads(exc.read())["error_type"] == "METHOD-NOT-ALLOWED"
    request = urllib.request.Request(sora.api_url, data=b'{"channel_id":"x","data":{"v":NaN}}', method="POST",
                                     headers={"x-sora-target": "Sora_20151104.PushChannel"})
    try:
        urllib.request.urlopen(request, timeout=TIMEOUT)
        pytest.fail("NaN should be refused")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400 and json.loads(exc.read())["error_type"] == "INVALID-JSON"
    with pytest.raises(ValueError):
        sora.push("x", {"v": float("nan")})


def test_connect_timeout(ctx, clients):
    from sora_sdk.websocket import HandshakeError

    with LocalSora(connect_timeout=0.3) as sora:
        with pytest.raises(HandshakeError) as info:
            WebSocketClient.connect(sora.signaling_url.replace("/signaling", "/other"), timeout=5.0)
        assert info.value.status == 404
        idle = clients(sora.signaling_url)
        assert idle.wait_closed() == (4000, "CONNECT-TIMEOUT")


def test_command_line():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "sora_sdk.testing", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        lines = {}
        for _ in range(2):
            key, _, value = proc.stdout.readline().strip().partition("=")
            lines[key] = value
        assert lines["signaling_url"].startswith("ws://127.0.0.1:")
        assert lines["signaling_url"].endswith("/signaling")
        assert lines["api_url"].startswith("http://127.0.0.1:")
        ws = WebSocketClient.connect(lines["signaling_url"], timeout=5.0)
        ws.send_text('{"type":"connect","role":"recvonly","channel_id":"cli"}')
        is_text, payload = ws.recv(timeout=TIMEOUT)
        assert json.loads(payload)["type"] == "offer"
        ws.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
