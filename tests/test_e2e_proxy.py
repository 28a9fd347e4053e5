"""End to end through a real HTTP CONNECT proxy: our SDK -> tinyproxy (Debian's `tinyproxy-bin`) -> the
local Sora server, over ws:// and wss://, loopback only.

Each test starts its own tinyproxy in the foreground (``-d``) with a generated configuration in a temporary
directory (Basic auth, CONNECT allowed only to the server's port, clients from 127.0.0.1 only, a log file
there, no syslog); the fixture always kills it.

What tinyproxy 1.11 answers a CONNECT without valid credentials: no ``Proxy-Authorization`` at all ->
``407 Proxy Authentication Required``; wrong credentials -> ``401 Unauthorized``. The SDK reports either
as WEBSOCKET_HANDSHAKE_FAILED with the proxy's status line in the message.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from typing import List, Optional, Sequence

import pytest

import sora_sdk
from sora_sdk.testing import LocalSora
from tests.conftest import Recorder, wait_until

WAIT = 15.0
Code = sora_sdk.SoraSignalingErrorCode
USER, PASSWORD = "sora-user", "s3cret-pass"  # tinyproxy's BasicAuth takes [A-Za-z0-9._-] only


def _find_tinyproxy() -> Optional[str]:
    return shutil.which("tinyproxy") or next(
        (p for p in ("/usr/bin/tinyproxy", "/usr/sbin/tinyproxy") if os.access(p, os.X_OK)), None)


TINYPROXY = _find_tinyproxy()

pytestmark = [pytest.mark.skipif(TINYPROXY is None, reason="needs the tinyproxy binary (Debian: tinyproxy-bin)")]
if importlib.util.find_spec("pytest_timeout"):
    pytestmark.append(pytest.mark.timeout(60))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TinyProxy:
    """One tinyproxy process on 127.0.0.1 (its own config, log and output in `directory`)."""

    def __init__(self, directory: str, connect_ports: Sequence[int], upstream: Optional[str] = None) -> None:
        self.directory = directory
        self.log_path = os.path.join(directory, "tinyproxy.log")
        self.process: Optional[subprocess.Popen] = None
        self.port = 0
        last_error = ""
        for _attempt in range(3):  # the port picked may be taken before tinyproxy binds it
            self.port = _free_port()
            conf = os.path.join(directory, "tinyproxy.conf")
            lines = ["Listen 127.0.0.1", "Port %d" % self.port, "Timeout 60", "MaxClients 20",
                     'LogFile "%s"' % self.log_path, "LogLevel Info", "Syslog Off",
                     "Allow 127.0.0.1", "BasicAuth %s %s" % (USER, PASSWORD), "DisableViaHeader Yes"]
            lines += ["ConnectPort %d" % port for port in connect_ports]
            if upstream:
                lines.append("Upstream http %s" % upstream)
            with open(conf, "w") as handle:
                handle.write("\n".join(lines) + "\n")
            output = open(os.path.join(directory, "tinyproxy.out"), "wb")
            try:
                self.process = subprocess.Popen([TINYPROXY, "-d", "-c", conf], stdin=subprocess.DEVNULL,
                                                stdout=output, stderr=subprocess.STDOUT)
            finally:
                output.close()
            if self._wait_listening(10.0):
                return
            last_error = self.output()
            self.close()
        raise RuntimeError("tinyproxy did not start: %s" % last_error)

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def output(self) -> str:
        try:
            with open(os.path.join(self.directory, "tinyproxy.out"), errors="replace") as handle:
                return handle.read()[-2000:]
        except OSError:
            return ""

    def connects_to(self, port: int) -> int:
        """How many CONNECT requests to 127.0.0.1:`port` tinyproxy logged."""
        return self.log().count("CONNECT 127.0.0.1:%d HTTP/1.1" % port)

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def start_proxy(tmp_path):
    """start_proxy(connect_ports, upstream=None) -> a running TinyProxy; every one is killed afterwards."""
    proxies: List[TinyProxy] = []

    def start(connect_ports: Sequence[int], upstream: Optional[str] = None) -> TinyProxy:
        directory = tmp_path / ("proxy%d" % len(proxies))
        directory.mkdir()
        proxy = TinyProxy(str(directory), connect_ports, upstream)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def tls_sora():
    with LocalSora(tls=True) as server:
        yield server


class RecordingUpstream:
    """A minimal upstream HTTP proxy behind tinyproxy: records the CONNECT requests tinyproxy sends on
    (their headers) and tunnels them to 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: List[bytes] = []
        self._sockets: List[socket.socket] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="test-upstream-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(WAIT)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            self.requests.append(head)
            target = head.split(b"\r\n", 1)[0].split()[1].decode()
            host, _, port = target.rpartition(":")
            if host != "127.0.0.1":
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            upstream = socket.create_connection((host, int(port)), timeout=WAIT)
            self._sockets.append(upstream)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            conn.settimeout(None)
            upstream.settimeout(None)
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()
            self._pump(conn, upstream)
        except OSError:
            pass

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
        self._thread.join(2)


@pytest.fixture
def upstream():
    server = RecordingUpstream()
    yield server
    server.close()


def _connect(sora, url: str, channel_id: str, **kwargs):
    conn = sora.create_connection(signaling_urls=[url], role="recvonly", channel_id=channel_id,
                                  websocket_connection_timeout=10, **kwargs)
    rec = Recorder(conn)
    conn.connect()
    return conn, rec


def _dc_client(sora, server, proxy: TinyProxy, channel_id: str, **kwargs):
    conn, rec = _connect(sora, server.signaling_url, channel_id, audio=False, video=False,
                         data_channel_signaling=True,
                         data_channels=[{"label": "#chat", "direction": "sendrecv"}],
                         proxy_url=proxy.url, proxy_username=USER, proxy_password=PASSWORD, **kwargs)
    assert rec.connected.wait(WAIT), (rec.events, proxy.log()[-2000:])
    assert wait_until(lambda: rec.of("switched"), WAIT), rec.events
    assert wait_until(lambda: ("#chat",) in rec.of("data_channel"), WAIT), rec.events
    return conn, rec


def test_ws_through_tinyproxy_with_data_channels(local_sora, sora, start_proxy):
    proxy = start_proxy([local_sora.port])
    a, ra = _dc_client(sora, local_sora, proxy, "proxied")
    b, rb = _dc_client(sora, local_sora, proxy, "proxied")
    # both signaling WebSockets went through the proxy
    assert proxy.connects_to(local_sora.port) == 2, proxy.log()
    assert sorted(c["connection_id"] for c in local_sora.connections("proxied")) == \
        sorted([ra.connection_id, rb.connection_id])
    assert a.send_data_channel("#chat", b"over the proxied session") is True
    assert wait_until(lambda: ("#chat", b"over the proxied session") in rb.of("message"), WAIT), rb.events
    stats = json.loads(b.get_stats())
    chat = [s for s in stats if s["type"] == "data-channel" and s["label"] == "#chat"]
    assert chat and chat[0]["messagesReceived"] == 1 and chat[0]["state"] == "open", chat
    b.disconnect()
    a.disconnect()
    assert ra.disconnect[0] == Code.CLOSE_SUCCEEDED and rb.disconnect[0] == Code.CLOSE_SUCCEEDED, \
        (ra.disconnect, rb.disconnect)


def test_wss_through_tinyproxy(tls_sora, sora, start_proxy):
    proxy = start_proxy([tls_sora.port])
    conn, rec = _connect(sora, tls_sora.signaling_url, "proxied-tls", ca_cert=tls_sora.ca_cert,
                         proxy_url=proxy.url, proxy_username=USER, proxy_password=PASSWORD)
    assert rec.connected.wait(WAIT), (rec.events, proxy.log()[-2000:])
    assert proxy.connects_to(tls_sora.port) == 1, proxy.log()
    assert wait_until(lambda: conn.connection_state == "connected", WAIT), conn.connection_state
    stats = json.loads(conn.get_stats())
    assert isinstance(stats, list) and any(s.get("type") == "transport" for s in stats), stats
    conn.disconnect()
    assert rec.disconnected.wait(WAIT)
    assert rec.disconnect[0] == Code.CLOSE_SUCCEEDED, rec.disconnect


def test_tinyproxy_refuses_other_ports(local_sora, sora, start_proxy):
    proxy = start_proxy([local_sora.port + 1 if local_sora.port < 65535 else local_sora.port - 1])
    conn, rec = _connect(sora, local_sora.signaling_url, "proxied-port", proxy_url=proxy.url,
                         proxy_username=USER, proxy_password=PASSWORD)
    assert rec.disconnected.wait(WAIT), rec.events
    code, message = rec.disconnect
    assert code == Code.WEBSOCKET_HANDSHAKE_FAILED, rec.disconnect
    assert "Proxy CONNECT failed: 403" in message, message
    conn.disconnect()


@pytest.mark.parametrize("credentials, status", [
    ({"proxy_username": USER, "proxy_password": "wrong"}, "401 Unauthorized"),
    ({}, "407 Proxy Authentication Required"),
], ids=["wrong-password", "no-credentials"])
@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_bad_proxy_credentials(local_sora, tls_sora, sora, start_proxy, credentials, status, secure):
    server = tls_sora if secure else local_sora
    proxy = start_proxy([server.port])
    conn, rec = _connect(sora, server.signaling_url, "proxied-auth", proxy_url=proxy.url,
                         ca_cert=server.ca_cert if secure else None, **credentials)
    assert rec.disconnected.wait(WAIT), rec.events
    assert not rec.connected.is_set() and not rec.of("set_offer")
    code, message = rec.disconnect
    assert code == Code.WEBSOCKET_HANDSHAKE_FAILED, rec.disconnect
    assert message == "Failed Websocket handshake: last_ec=Proxy CONNECT failed: %s last_url=%s" % (
        status, server.signaling_url), message
    assert not server.connections("proxied-auth")
    conn.disconnect()


def test_credentials_in_the_proxy_url(local_sora, sora, start_proxy):
    proxy = start_proxy([local_sora.port])
    url = "http://%s:%s@127.0.0.1:%d" % (USER.replace("-", "%2D"), PASSWORD, proxy.port)  # percent-decoded
    conn, rec = _connect(sora, local_sora.signaling_url, "proxied-url", proxy_url=url)
    assert rec.connected.wait(WAIT), (rec.events, proxy.log()[-2000:])
    conn.disconnect()
    assert rec.disconnect[0] == Code.CLOSE_SUCCEEDED, rec.disconnect


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_proxy_agent_reaches_the_proxy(local_sora, tls_sora, sora, start_proxy, upstream, secure):
    # tinyproxy passes the client's CONNECT headers (User-Agent included, Proxy-Authorization not) on to
    # its upstream proxy: what the upstream records is what tinyproxy accepted from the SDK.
    server = tls_sora if secure else local_sora
    proxy = start_proxy([server.port], upstream="127.0.0.1:%d" % upstream.port)
    agent = "Sora Proxy Agent/1.0 (test)"
    conn, rec = _connect(sora, server.signaling_url, "proxied-agent", proxy_url=proxy.url,
                         proxy_username=USER, proxy_password=PASSWORD, proxy_agent=agent,
                         ca_cert=server.ca_cert if secure else None, user_agent="Not The Proxy Agent")
    assert rec.connected.wait(WAIT), (rec.events, proxy.log()[-2000:])
    assert len(upstream.requests) == 1, upstream.requests
    lines = upstream.requests[0].decode("latin-1").split("\r\n")
    assert lines[0] == "CONNECT 127.0.0.1:%d HTTP/1.1" % server.port, lines
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers.get("user-agent") == agent, lines
    assert "proxy-authorization" not in headers  # tinyproxy consumed it
    conn.disconnect()
    assert rec.disconnect[0] == Code.CLOSE_SUCCEEDED, rec.disconnect
