"""Tests for sora_sdk.websocket over real sockets on 127.0.0.1.

Every blocking call has a timeout so the suite ends by itself even when
something is broken.  TLS material is made at test time with the openssl CLI.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import queue
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from sora_sdk.websocket import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    HandshakeError,
    HandshakeTimeout,
    InvalidURLError,
    ProtocolError,
    WebSocketClient,
    WebSocketClosed,
    WebSocketEOF,
    WebSocketError,
    accept,
    accept_key,
    encode_frame,
    open_first,
    parse_url,
    read_request,
    reject,
)

WAIT = 10.0  # generous upper bound for anything that should happen "now"


# ---------------------------------------------------------------- test servers

class Server:
    """Accepts TCP connections on 127.0.0.1 and runs ``handler(conn)`` per connection.

    The default handler completes the WebSocket upgrade and puts the
    ServerWebSocket on ``accepted`` for the test to use.
    """

    def __init__(self, handler=None, *, tls=None, max_message_size=None, host="127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.host = host
        self.port = self.listener.getsockname()[1]
        self.handler = handler or self._upgrade
        self.tls = tls
        self.max_message_size = max_message_size
        self.accepted: "queue.Queue" = queue.Queue()
        self.requests: list = []
        self.errors: list = []
        self.connections: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def url(self, path="/signaling", scheme=None):
        scheme = scheme or ("wss" if self.tls else "ws")
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d%s" % (scheme, host, self.port, path)

    def _loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(WAIT)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.connections.append(conn)
            self.handler(conn)
        except Exception as error:  # recorded for assertions
            self.errors.append(error)
            conn.close()

    def _upgrade(self, conn):
        request = read_request(conn, timeout=WAIT)
        self.requests.append(request)
        kwargs = {}
        if self.max_message_size is not None:
            kwargs["max_message_size"] = self.max_message_size
        self.accepted.put(accept(conn, request=request, **kwargs))

    def next_ws(self):
        return self.accepted.get(timeout=WAIT)

    def close(self):
        self._stop.set()
        self._thread.join(WAIT)
        self.listener.close()
        while not self.accepted.empty():
            self.accepted.get().abort()
        for conn in self.connections:
            try:
                conn.close()
            except OSError:
                pass


@pytest.fixture
def make_server():
    servers = []

    def factory(*args, **kwargs):
        server = Server(*args, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def pool():
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    yield executor
    executor.shutdown(wait=False)


@pytest.fixture
def clients():
    opened = []
    yield opened
    for client in opened:
        client.abort()


def connect(clients, url, **kwargs):
    kwargs.setdefault("timeout", WAIT)
    client = WebSocketClient.connect(url, **kwargs)
    clients.append(client)
    return client


def dead_port():
    """A port on 127.0.0.1 where nothing listens."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def raw_upgrade(port, path="/signaling"):
    """Upgrade a plain socket by hand (minimal request: Host without port)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n" % (path, key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "server closed during the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 ")
    assert ("Sec-WebSocket-Accept: %s" % accept_key(key)).encode() in head
    return sock


def read_exact(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "unexpected EOF"
        data += chunk
    return data


def read_raw_frame(sock):
    """Read one unmasked frame from a raw socket: (fin, opcode, payload)."""
    first, second = read_exact(sock, 2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", read_exact(sock, 2))[0]
    elif size == 127:
        size = struct.unpack("!Q", read_exact(sock, 8))[0]
    assert not second & 0x80, "server frames must not be masked"
    return bool(first & 0x80), first & 0x0F, read_exact(sock, size)


class RawServer(Server):
    """A server that answers the upgrade by hand and then runs ``script(sock)``."""

    def __init__(self, script, *, response=None):
        self.script = script
        self.response = response
        super().__init__(self._raw)

    def _raw(self, conn):
        request = read_request(conn, timeout=WAIT)
        self.requests.append(request)
        if self.response is not None:
            conn.sendall(self.response)
        else:
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                          % accept_key(request.headers["sec-websocket-key"])).encode())
        self.script(conn)


# ---------------------------------------------------------------- parse_url

@pytest.mark.parametrize("url,expected", [
    ("ws://127.0.0.1:5000/signaling?x=1&y=%20", (False, "127.0.0.1", 5000, "/signaling?x=1&y=%20")),
    ("wss://sora.example.com/signaling", (True, "sora.example.com", 443, "/signaling")),
    ("ws://example.com", (False, "example.com", 80, "/")),
    ("ws://[::1]:8080/a/b", (False, "::1", 8080, "/a/b")),
])
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "https://h/", "ftp://h/", "ws://", "",
                                 "ws://h:99999/", "127.0.0.1:80", "wss:///path"])
def test_parse_url_rejects(url):
    with pytest.raises(ValueError):
        parse_url(url)


# ---------------------------------------------------------------- handshake

def test_request_headers_are_exact(make_server, clients):
    server = make_server()
    connect(clients, server.url("/signaling?channel=a"), user_agent="Mozilla 5.0 (Test/1)")
    server.next_ws()
    lines = server.requests[0].raw.decode().split("\r\n")
    assert lines[0] == "GET /signaling?channel=a HTTP/1.1"
    names = [line.split(":", 1)[0] for line in lines[1:]]
    assert names == ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key",
                     "Sec-WebSocket-Version", "User-Agent"]
    assert lines[1:3] == ["Host: 127.0.0.1", "Upgrade: websocket"]
    assert lines[3] == "Connection: Upgrade"
    assert len(base64.b64decode(lines[4].split(": ")[1])) == 16
    assert lines[5:] == ["Sec-WebSocket-Version: 13", "User-Agent: Mozilla 5.0 (Test/1)"]


def test_no_user_agent_header_when_none(make_server, clients):
    server = make_server()
    connect(clients, server.url())
    server.next_ws()
    assert "user-agent" not in server.requests[0].headers


def test_server_tolerates_minimal_request(make_server):
    server = make_server()
    sock = raw_upgrade(server.port)
    ws = server.next_ws()
    assert ws.path == "/signaling" and ws.headers["host"] == "127.0.0.1"
    sock.sendall(encode_frame(OP_TEXT, b"hi", mask=True))
    assert ws.recv(timeout=WAIT) == (True, b"hi")
    sock.close()


def test_server_rejects_bad_upgrade_with_400(make_server):
    server = make_server()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    response = sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 400 ")
    deadline = time.monotonic() + WAIT
    while not server.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(server.errors[0], HandshakeError)
    sock.close()


def test_403_is_declined(make_server):
    server = make_server(lambda conn: reject(conn, 403, "Forbidden"))
    with pytest.raises(HandshakeError) as info:
        WebSocketClient.connect(server.url(), timeout=WAIT)
    assert str(info.value) == "The WebSocket handshake was declined by the remote peer"
    assert info.value.status == 403
    assert info.value.last_url == server.url()


def test_connection_refused():
    url = "ws://127.0.0.1:%d/signaling" % dead_port()
    with pytest.raises(HandshakeError) as info:
        WebSocketClient.connect(url, timeout=WAIT)
    assert str(info.value) == "Connection refused"
    assert (info.value.last_error, info.value.last_url) == ("Connection refused", url)


def test_handshake_timeout(make_server):
    server = make_server(lambda conn: time.sleep(3))  # never answers in time
    started = time.monotonic()
    with pytest.raises(HandshakeTimeout) as info:
        WebSocketClient.connect(server.url(), timeout=0.5)
    assert str(info.value) == "Connection timeout"
    assert 0.4 < time.monotonic() - started < 2.9


@pytest.mark.parametrize("response,message", [
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
     "The WebSocket handshake Sec-WebSocket-Accept field is invalid"),
    (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
     "The WebSocket handshake Upgrade field is missing"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
     "The WebSocket handshake was declined by the remote peer"),
])
def test_bad_upgrade_responses(make_server, response, message):
    server = RawServer(lambda sock: None, response=response)
    try:
        with pytest.raises(HandshakeError) as info:
            WebSocketClient.connect(server.url(), timeout=WAIT)
        assert str(info.value) == message
    finally:
        server.close()


def test_eof_during_handshake(make_server):
    server = make_server(lambda conn: (read_request(conn), conn.close()))
    with pytest.raises(HandshakeError, match="^End of file$"):
        WebSocketClient.connect(server.url(), timeout=WAIT)


def test_connect_rejects_bad_scheme():
    with pytest.raises(InvalidURLError) as info:
        WebSocketClient.connect("http://127.0.0.1/signaling")
    assert str(info.value) == "Invalid Signaling URL: http://127.0.0.1/signaling | "


def test_ipv6_loopback(make_server, clients):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = make_server(host="::1")
    except OSError:
        pytest.skip("::1 not available")
    client = connect(clients, server.url())
    ws = server.next_ws()
    assert ws.headers["host"] == "[::1]"
    client.send_text("v6")
    assert ws.recv(timeout=WAIT) == (True, b"v6")


# ---------------------------------------------------------------- messages

def test_text_and_binary_round_trip(make_server, clients):
    server = make_server()
    client = connect(clients, server.url())
    ws = server.next_ws()
    big = os.urandom(1024 * 1024 + 3)
    for payload in ["", "hello", "ü日本" * 1000]:
        client.send_text(payload)
        assert ws.recv(timeout=WAIT) == (True, payload.encode())
        ws.send_text(payload)
        assert client.recv(timeout=WAIT) == (True, payload.encode())
    for payload in [b"", b"\x00\xff", big]:
        client.send_binary(payload)
        assert ws.recv(timeout=WAIT) == (False, payload)
        ws.send_binary(payload)
        assert client.recv(timeout=WAIT) == (False, payload)


def test_first_frame_in_same_packet_as_101(clients):
    class Eager(RawServer):
        def _raw(self, conn):
            request = read_request(conn, timeout=WAIT)
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                          % accept_key(request.headers["sec-websocket-key"])).encode()
                         + encode_frame(OP_TEXT, b'{"type":"offer"}', mask=False))
            time.sleep(1)

    server = Eager(None)
    try:
        client = connect(clients, server.url())
        assert client.recv(timeout=WAIT) == (True, b'{"type":"offer"}')
    finally:
        server.close()


def test_fragmented_message_with_interleaved_ping(make_server, clients):
    server = make_server()
    client = connect(clients, server.url())
    ws = server.next_ws()
    pongs = []
    ws.on_pong = pongs.append
    ws.send_frame(OP_TEXT, b"frag", fin=False)
    ws.send_frame(OP_PING, b"ping-data")
    ws.send_frame(OP_CONTINUATION, "mént".encode()[:3], fin=False)  # split inside a UTF-8 char
    ws.send_frame(OP_CONTINUATION, "mént".encode()[3:], fin=True)
    assert client.recv(timeout=WAIT) == (True, "fragmént".encode())
    client.send_binary(b"x")
    assert ws.recv(timeout=WAIT) == (False, b"x")  # the pong came before this message
    assert pongs == [b"ping-data"]
    # Fragmented client -> server binary message.
    client.send_frame(OP_BINARY, b"ab", fin=False)
    client.send_frame(OP_CONTINUATION, b"cd")
    assert ws.recv(timeout=WAIT) == (False, b"abcd")


def test_client_ping_is_answered(make_server, clients, pool):
    server = make_server()
    client = connect(clients, server.url())
    ws = server.next_ws()
    pongs = []
    client.on_pong = pongs.append
    server_recv = pool.submit(ws.recv, WAIT)  # answers the ping while it waits
    client.ping(b"keepalive")
    deadline = time.monotonic() + WAIT
    while not pongs and time.monotonic() < deadline:
        with pytest.raises(TimeoutError):  # a pong is not a message
            client.recv(timeout=0.05)
    assert pongs == [b"keepalive"]
    client.send_text("done")
    assert server_recv.result(WAIT) == (True, b"done")


def test_concurrent_sends_are_not_interleaved(make_server, clients):
    server = make_server()
    client = connect(clients, server.url())
    ws = server.next_ws()

    def sender(index):
        for count in range(50):
            client.send_binary(bytes([index]) * (100 + count * 37))

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    received = [ws.recv(timeout=WAIT)[1] for _ in range(200)]
    for thread in threads:
        thread.join(WAIT)
    for payload in received:
        assert payload == payload[:1] * len(payload)
    expected = [100 + count * 37 for count in range(50) for _ in range(4)]
    assert sorted(len(payload) for payload in received) == sorted(expected)


def test_recv_timeout_keeps_partial_frame(make_server, clients):
    frame = encode_frame(OP_TEXT, b"split-frame", mask=False)
    proceed = threading.Event()

    def script(sock):
        sock.sendall(frame[:5])
        proceed.wait(WAIT)
        sock.sendall(frame[5:])
        time.sleep(1)

    server = RawServer(script)
    try:
        client = connect(clients, server.url())
        with pytest.raises(TimeoutError):
            client.recv(timeout=0.2)
        proceed.set()
        assert client.recv(timeout=WAIT) == (True, b"split-frame")
    finally:
        server.close()


# ---------------------------------------------------------------- closing

def test_server_close_reaches_client(make_server, clients, pool):
    server = make_server()
    client = connect(clients, server.url())
    ws = server.next_ws()
    closing = pool.submit(ws.close, 1000, "TYPE-DISCONNECT", WAIT)
    with pytest.raises(WebSocketClosed) as info:
        client.recv(timeout=WAIT)
    assert (info.value.code, info.value.reason) == (1000, "TYPE-DISCONNECT")
    assert closing.result(WAIT) == (1000, "")  # our echo
    with pytest.raises(WebSocketClosed):  # later calls keep reporting it
        client.recv(timeout=WAIT)
    with pytest.raises(WebSocketError, match="^WebSocket is closed$"):
        client.send_text("late")


def test_client_close_with_code_and_reason(make_server, clients, pool):
    server = make_server()
    client = connect(clients, server.url())
    ws = server.next_ws()
    got = pool.submit(lambda: pytest.raises(WebSocketClosed, ws.recv, WAIT).value)
    assert client.close(4000, "TEST-ERROR", timeout=WAIT) == (4000, "")
    closed = got.result(WAIT)
    assert (closed.code, closed.reason) == (4000, "TEST-ERROR")
    assert client.closed


def test_close_while_another_thread_reads(make_server, clients, pool):
    server = make_server()
    client = connect(clients, server.url())
    ws = server.next_ws()
    reader = pool.submit(lambda: pytest.raises(WebSocketClosed, client.recv).value)
    time.sleep(0.1)  # let the reader block in recv()
    server_side = pool.submit(lambda: pytest.raises(WebSocketClosed, ws.recv, WAIT).value)
    assert client.close(1000, "", timeout=WAIT) == (1000, "")
    assert reader.result(WAIT).code == 1000
    assert server_side.result(WAIT).code == 1000


def test_close_timeout_when_peer_never_answers(make_server, clients):
    server = make_server()
    client = connect(clients, server.url())
    server.next_ws()  # accepted but nobody reads on the server side
    started = time.monotonic()
    assert client.close(timeout=0.3) is None
    assert 0.25 < time.monotonic() - started < 3
    with pytest.raises(WebSocketEOF, match="Operation canceled"):
        client.recv(timeout=WAIT)


def test_empty_close_frame_reports_1005(make_server, clients):
    def script(sock):
        sock.sendall(encode_frame(0x8, b"", mask=False))
        time.sleep(1)

    server = RawServer(script)
    try:
        client = connect(clients, server.url())
        with pytest.raises(WebSocketClosed) as info:
            client.recv(timeout=WAIT)
        assert (info.value.code, info.value.reason) == (1005, "")
    finally:
        server.close()


def test_eof_without_close_frame(make_server, clients):
    server = make_server()
    client = connect(clients, server.url())
    server.next_ws().abort()
    with pytest.raises(WebSocketEOF) as info:
        client.recv(timeout=WAIT)
    assert str(info.value) == "End of file"


def test_abort_wakes_blocked_reader(make_server, clients, pool):
    server = make_server()
    client = connect(clients, server.url())
    ws = server.next_ws()
    reader = pool.submit(lambda: pytest.raises(WebSocketEOF, client.recv).value)
    time.sleep(0.1)
    client.abort()
    assert str(reader.result(WAIT)) == "Operation canceled"
    with pytest.raises(WebSocketEOF) as info:  # the server sees no close frame
        ws.recv(timeout=WAIT)
    assert str(info.value) == "End of file"
    assert client.fileno() == -1


# ---------------------------------------------------------------- protocol errors

def test_oversize_message_is_rejected_by_server(make_server, clients):
    server = make_server(max_message_size=1024)
    client = connect(clients, server.url())
    ws = server.next_ws()
    client.send_binary(b"x" * 1024)  # exactly the limit is fine
    assert ws.recv(timeout=WAIT) == (False, b"x" * 1024)
    client.send_binary(b"x" * 1025)
    with pytest.raises(ProtocolError) as info:
        ws.recv(timeout=WAIT)
    assert info.value.code == 1009
    with pytest.raises(WebSocketClosed) as closed:
        client.recv(timeout=WAIT)
    assert closed.value.code == 1009


def test_oversize_header_fails_before_payload(make_server, clients):
    def script(sock):
        sock.sendall(bytes([0x82, 127]) + struct.pack("!Q", 16 * 1024 * 1024 + 1))
        time.sleep(2)

    server = RawServer(script)
    try:
        client = connect(clients, server.url())
        with pytest.raises(ProtocolError) as info:
            client.recv(timeout=WAIT)
        assert info.value.code == 1009
    finally:
        server.close()


def test_oversize_fragmented_message(make_server, clients):
    server = make_server()
    client = connect(clients, server.url(), max_message_size=1000)
    ws = server.next_ws()
    ws.send_frame(OP_BINARY, b"a" * 400, fin=False)
    ws.send_frame(OP_CONTINUATION, b"b" * 400, fin=False)
    ws.send_frame(OP_CONTINUATION, b"c" * 400, fin=True)
    with pytest.raises(ProtocolError) as info:
        client.recv(timeout=WAIT)
    assert info.value.code == 1009


@pytest.mark.parametrize("frame,code", [
    (encode_frame(OP_TEXT, b"masked", mask=True), 1002),      # server frames must not be masked
    (encode_frame(OP_TEXT, b"\xff\xfe", mask=False), 1007),   # invalid UTF-8
    (bytes([0xC1, 0]), 1002),                                  # RSV1 without extension
    (bytes([0x83, 0]), 1002),                                  # reserved opcode
    (encode_frame(OP_CONTINUATION, b"x", mask=False), 1002),   # continuation first
    (encode_frame(OP_PING, b"x" * 126, mask=False), 1002),     # control frame too long
    (encode_frame(0x8, b"\x03", mask=False), 1002),            # 1-byte close payload
    (encode_frame(0x8, struct.pack("!H", 1005), mask=False), 1002),  # reserved close code
])
def test_client_protocol_errors(clients, frame, code):
    def script(sock):
        sock.sendall(frame)
        time.sleep(1)

    server = RawServer(script)
    try:
        client = connect(clients, server.url())
        with pytest.raises(ProtocolError) as info:
            client.recv(timeout=WAIT)
        assert info.value.code == code
        with pytest.raises(ProtocolError):
            client.recv(timeout=WAIT)
    finally:
        server.close()


def test_server_requires_masked_frames(make_server):
    server = make_server()
    sock = raw_upgrade(server.port)
    ws = server.next_ws()
    sock.sendall(encode_frame(OP_TEXT, b"plain", mask=False))
    with pytest.raises(ProtocolError) as info:
        ws.recv(timeout=WAIT)
    assert info.value.code == 1002
    fin, opcode, payload = read_raw_frame(sock)
    assert (fin, opcode, struct.unpack("!H", payload[:2])[0]) == (True, 0x8, 1002)
    sock.close()


def test_server_answers_ping_and_echoes_close(make_server):
    server = make_server()
    sock = raw_upgrade(server.port)
    ws = server.next_ws()
    sock.sendall(encode_frame(OP_PING, b"p", mask=True) + encode_frame(OP_TEXT, b"t", mask=True))
    assert ws.recv(timeout=WAIT) == (True, b"t")
    assert read_raw_frame(sock) == (True, 0xA, b"p")
    sock.sendall(encode_frame(0x8, struct.pack("!H", 1000) + b"bye", mask=True))
    with pytest.raises(WebSocketClosed) as info:
        ws.recv(timeout=WAIT)
    assert (info.value.code, info.value.reason) == (1000, "bye")
    assert read_raw_frame(sock) == (True, 0x8, struct.pack("!H", 1000))
    assert sock.recv(10) == b""  # then the server drops the TCP connection
    sock.close()


# ---------------------------------------------------------------- open_first

def test_open_first_one_dead_one_live(make_server):
    server = make_server()
    dead = "ws://127.0.0.1:%d/signaling" % dead_port()
    client, url = open_first([dead, server.url()], timeout=WAIT)
    try:
        assert url == server.url()
        ws = server.next_ws()
        client.send_text("x")
        assert ws.recv(timeout=WAIT) == (True, b"x")
    finally:
        client.abort()


def test_open_first_two_live_loser_gets_normal_close(make_server):
    fast = make_server()
    slow = make_server()
    slow_upgrade = slow.handler

    def delayed(conn):
        time.sleep(0.5)
        slow_upgrade(conn)

    slow.handler = delayed
    client, url = open_first([slow.url(), fast.url()], timeout=WAIT)
    try:
        assert url == fast.url()
        loser = slow.next_ws()
        with pytest.raises(WebSocketClosed) as info:
            loser.recv(timeout=WAIT)
        assert (info.value.code, info.value.reason) == (1000, "")
        winner = fast.next_ws()
        client.send_text("still open")
        assert winner.recv(timeout=WAIT) == (True, b"still open")
    finally:
        client.abort()


def test_open_first_all_fail_reports_last(make_server):
    def slow_reject(conn):
        time.sleep(0.5)
        reject(conn, 403, "Forbidden")

    server = make_server(slow_reject)
    dead = "ws://127.0.0.1:%d/signaling" % dead_port()
    with pytest.raises(HandshakeError) as info:
        open_first([server.url(), dead], timeout=WAIT)
    assert info.value.last_url == server.url()
    assert info.value.last_error == "The WebSocket handshake was declined by the remote peer"


def test_open_first_skips_bad_schemes(make_server):
    server = make_server()
    client, url = open_first(["http://127.0.0.1/x", server.url()], timeout=WAIT)
    client.abort()
    assert url == server.url()
    with pytest.raises(InvalidURLError) as info:
        open_first(["http://127.0.0.1/x", "https://127.0.0.1/y"])
    assert str(info.value) == ("Invalid Signaling URL: http://127.0.0.1/x | "
                               "Invalid Signaling URL: https://127.0.0.1/y | ")


# ---------------------------------------------------------------- TLS

def _openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _issue(directory, name, subject, extensions):
    with open(os.path.join(directory, name + ".ext"), "w") as handle:
        handle.write(extensions)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + ".key", "-out", name + ".csr", "-subj", subject, cwd=directory)
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", name + ".pem", "-extfile", name + ".ext",
             cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    directory = str(tmp_path_factory.mktemp("pki"))
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Sora Test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    leaf = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _issue(directory, "server", "/CN=127.0.0.1",
           leaf + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _issue(directory, "wrongname", "/CN=wrong.example",
           leaf + "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:wrong.example\n")
    _issue(directory, "client", "/CN=sora-client", leaf + "extendedKeyUsage=clientAuth\n")

    def read(name):
        with open(os.path.join(directory, name), "rb") as handle:
            return handle.read()

    class Pki:
        path = directory
        ca = read("ca.pem")
        client_cert = read("client.pem")
        client_key = read("client.key")

        @staticmethod
        def server_context(cert="server", require_client=False):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(os.path.join(directory, cert + ".pem"),
                                    os.path.join(directory, cert + ".key"))
            if require_client:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(os.path.join(directory, "ca.pem"))
            return context

    return Pki


def test_wss_verified_with_ca_cert(make_server, clients, pki):
    server = make_server(tls=pki.server_context())
    client = connect(clients, server.url(), ca_cert=pki.ca)
    ws = server.next_ws()
    client.send_text("secure")
    assert ws.recv(timeout=WAIT) == (True, b"secure")
    ws.send_binary(os.urandom(200000))
    assert len(client.recv(timeout=WAIT)[1]) == 200000


def test_wss_fails_without_ca_cert(make_server, pki):
    server = make_server(tls=pki.server_context())
    with pytest.raises(HandshakeError) as info:
        WebSocketClient.connect(server.url(), timeout=WAIT)
    assert str(info.value).startswith("certificate verify failed")


def test_wss_insecure_skips_verification(make_server, clients, pki):
    server = make_server(tls=pki.server_context("wrongname"))
    client = connect(clients, server.url(), insecure=True)
    server.next_ws().send_text("ok")
    assert client.recv(timeout=WAIT) == (True, b"ok")


def test_wss_wrong_hostname_fails(make_server, pki):
    server = make_server(tls=pki.server_context("wrongname"))
    with pytest.raises(HandshakeError) as info:
        WebSocketClient.connect(server.url(), timeout=WAIT, ca_cert=pki.ca)
    assert str(info.value).startswith("certificate verify failed")
    assert "127.0.0.1" in str(info.value) or "mismatch" in str(info.value).lower()


def _tls_temp_dirs():
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("sora-tls-")}


def test_mutual_tls(make_server, clients, pki):
    server = make_server(tls=pki.server_context(require_client=True))
    before = _tls_temp_dirs()
    client = connect(clients, server.url(), ca_cert=pki.ca, client_cert=pki.client_cert,
                     client_key=pki.client_key)
    assert _tls_temp_dirs() == before  # the PEM files were removed right away
    ws = server.next_ws()
    peer = ws._sock.getpeercert()
    assert ("commonName", "sora-client") in [item for rdn in peer["subject"] for item in rdn]
    client.send_text("mtls")
    assert ws.recv(timeout=WAIT) == (True, b"mtls")


def test_mutual_tls_without_client_cert_fails(make_server, pki):
    server = make_server(tls=pki.server_context(require_client=True))
    with pytest.raises(HandshakeError) as info:
        WebSocketClient.connect(server.url(), timeout=WAIT, ca_cert=pki.ca)
    assert str(info.value) and "_ssl.c" not in str(info.value)


# ---------------------------------------------------------------- HTTP CONNECT proxy

class ConnectProxy(Server):
    """A tiny HTTP CONNECT proxy with Basic auth that only tunnels to 127.0.0.1."""

    def __init__(self, username="user", password="secret"):
        self.expected = "Basic " + base64.b64encode(
            ("%s:%s" % (username, password)).encode()).decode()
        super().__init__(self._proxy)

    def _proxy(self, conn):
        request = read_request(conn, timeout=WAIT)
        self.requests.append(request)
        host, _, port = request.path.rpartition(":")
        if request.method != "CONNECT":
            reject(conn, 405, "Method Not Allowed", request=request)
        elif request.headers.get("proxy-authorization") != self.expected:
            reject(conn, 407, "Proxy Authentication Required", request=request)
        elif host != "127.0.0.1":
            reject(conn, 403, "Forbidden", request=request)
        else:
            upstream = socket.create_connection((host, int(port)), timeout=WAIT)
            self.connections.append(upstream)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()
            self._pump(conn, upstream)

    @staticmethod
    def _pump(source, target):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def proxy():
    server = ConnectProxy()
    yield server
    server.close()


def proxy_url(proxy):
    return "http://127.0.0.1:%d" % proxy.port


def test_proxy_tunnel_with_basic_auth(make_server, clients, proxy):
    server = make_server()
    client = connect(clients, server.url(), proxy_url=proxy_url(proxy), proxy_username="user",
                     proxy_password="secret", proxy_agent="Sora Test Agent")
    ws = server.next_ws()
    client.send_text("through the proxy")
    assert ws.recv(timeout=WAIT) == (True, b"through the proxy")
    request = proxy.requests[0]
    assert request.raw.decode().split("\r\n")[0] == "CONNECT 127.0.0.1:%d HTTP/1.1" % server.port
    assert request.headers["host"] == "127.0.0.1:%d" % server.port
    assert request.headers["user-agent"] == "Sora Test Agent"
    assert server.requests[0].headers["host"] == "127.0.0.1"


def test_proxy_wss_tunnel(make_server, clients, proxy, pki):
    server = make_server(tls=pki.server_context())
    client = connect(clients, server.url(), proxy_url=proxy_url(proxy), proxy_username="user",
                     proxy_password="secret", ca_cert=pki.ca)
    server.next_ws().send_text("tls in tunnel")
    assert client.recv(timeout=WAIT) == (True, b"tls in tunnel")


def test_proxy_wrong_credentials(make_server, proxy):
    server = make_server()
    with pytest.raises(HandshakeError) as info:
        WebSocketClient.connect(server.url(), timeout=WAIT, proxy_url=proxy_url(proxy),
                                proxy_username="user", proxy_password="wrong")
    assert info.value.status == 407
    assert "407" in str(info.value)
