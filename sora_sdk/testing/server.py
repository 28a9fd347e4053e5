"""The local Sora-compatible server: listener, HTTP routing and the public `LocalSora` object.

One TCP port serves the signaling WebSocket (``GET /signaling`` with
``Upgrade: websocket``), the REST API (``POST /``) and the browser viewer page
(``GET /viewer/``, see viewer.py). Each accepted socket gets its own thread; a
WebSocket's thread then runs its Session for the whole life of the connection. All server peers live in one engine Context owned by
the server.
"""
from __future__ import annotations

import heapq
import http.client
import logging
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from .. import websocket
from ..context import Context
from . import api, viewer
from .channel import ChannelRegistry
from .session import Session, encode_json

log = logging.getLogger("sora_sdk.testing")

MAX_SIGNALING_MESSAGE = 4 * 1024 * 1024


class Scheduler:
    """One thread running short callbacks at given times (timers of every session)."""

    class Handle:
        """A pending call; cancelling drops the callable at once (it may hold a whole session)."""

        __slots__ = ("fn",)

        def __init__(self, fn: Optional[Callable[[], Any]]) -> None:
            self.fn = fn

        @property
        def cancelled(self) -> bool:
            return self.fn is None

        def cancel(self) -> None:
            self.fn = None

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list = []
        self._seq = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="local-sora-timers", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], Any]) -> "Scheduler.Handle":
        handle = Scheduler.Handle(fn)
        with self._cond:
            if self._stopped:
                handle.cancel()
                return handle
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + max(delay, 0.0), self._seq, handle))
            self._cond.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            _, _, handle = heapq.heappop(self._heap)
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
            fn = handle.fn
            if fn is None:
                continue
            handle.fn = None
            try:
                fn()
            except Exception:
                log.exception("error in a local Sora timer")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap = []
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)


class LocalSora:
    """A Sora-compatible signaling server on loopback, for tests and offline use.

    ``with LocalSora() as sora: ...`` -- connect a client to ``sora.signaling_url``.

    Parameters:

    * ``host``/``port``: where to listen (port 0 picks a free port; see ``.port``).
    * ``secret``: when set, every connect must carry an HS256 JWT in
      ``metadata.access_token`` (or ``metadata.signaling_key`` / a string metadata).
    * ``auth_hook(connect_message) -> dict | None``: called for every connect;
      return overrides (keys of ``auth.OVERRIDE_KEYS``, plus ``metadata`` /
      ``authz_metadata``), None to accept, or raise to reject (``AUTHZ-FAILED``).
    * ``signaling_key``: when set, ``metadata.signaling_key`` must equal it.
    * ``redirect_to``: answer every connect that is not itself a redirected one
      (``"redirect": true``) with ``{"type":"redirect","location":redirect_to}``.
    * ``ping_interval``: seconds between WebSocket ``ping`` messages (None: off);
      ``ping_stats`` asks for stats in them.
    * ``video_codec_type``: codec when the client names none (VP9 as real Sora).
    * ``compress_labels``: standard DataChannel labels offered with compress=true.
    * ``ice_gathering_timeout``: seconds to wait for server candidates before the offer.
    * ``connect_timeout``: seconds a new WebSocket may take to send ``connect``.
    * ``ice_address``: gather server ICE candidates on this address instead of 127.0.0.1
      (e.g. a veth address in a test network namespace).
    * ``tls``: serve ``wss://`` / ``https://`` with a certificate made at start by the
      ``openssl`` tool (a throw-away test CA, see ``ca_cert``; the server certificate
      names ``tls_hostnames``, by default 127.0.0.1, localhost and ``host``).
    * ``require_client_cert`` (with ``tls``): clients must present a certificate
      signed by the test CA; one is made for them (``client_cert`` / ``client_key``).
    * ``sora_js_sdk``: path of sora-js-sdk's ``dist/sora.js`` for the browser viewer at
      ``viewer_url`` (default: ``$SORA_JS_SDK``, else what ``make web`` put in ``vendor/npm``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, secret=None,
                 auth_hook: Optional[Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]] = None, *,
                 signaling_key: Optional[str] = None, redirect_to: Optional[str] = None,
                 ping_interval: Optional[float] = None, ping_stats: bool = False,
                 video_codec_type: str = "VP9", compress_labels=(),
                 ice_gathering_timeout: float = 5.0, connect_timeout: float = 10.0,
                 ice_address: Optional[str] = None, tls: bool = False,
                 require_client_cert: bool = False, tls_hostnames: Optional[Sequence[str]] = None,
                 sora_js_sdk: Optional[str] = None, start: bool = True) -> None:
        self.host = host
        self.secret = secret
        self.auth_hook = auth_hook
        self.signaling_key = signaling_key
        self.redirect_to = redirect_to
        self.ping_interval = ping_interval
        self.ping_stats = ping_stats
        self.video_codec_type = video_codec_type.upper()
        self.compress_labels = frozenset(compress_labels)
        self.ice_gathering_timeout = ice_gathering_timeout
        self.connect_timeout = connect_timeout
        self.ice_address = ice_address
        self.sora_js_sdk = sora_js_sdk
        if require_client_cert and not tls:
            raise ValueError("require_client_cert needs tls=True")
        self.tls = bool(tls)
        self.require_client_cert = bool(require_client_cert)
        if tls_hostnames is None:
            tls_hostnames = ["127.0.0.1", "localhost"] + ([host] if host not in ("127.0.0.1", "localhost") else [])
        self.tls_hostnames = list(tls_hostnames)
        #: PEM of the test CA (``tls=True``): pass it as the client's ``ca_cert``.
        self.ca_cert: Optional[bytes] = None
        #: PEM client certificate / key signed by the test CA (``require_client_cert=True``).
        self.client_cert: Optional[bytes] = None
        self.client_key: Optional[bytes] = None
        self._ssl_context: Optional[ssl.SSLContext] = None
        self._requested_port = port
        self._registry = ChannelRegistry()
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self._sockets: set = set()
        self._sessions: set = set()
        self._closing = False
        self._started = False
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self.context: Optional[Context] = None
        self.scheduler: Optional[Scheduler] = None
        self.port = 0
        if start:
            self.start()

    # ---- life cycle ----
    def start(self) -> "LocalSora":
        if self._started:
            return self
        self._started = True
        if self.tls:
            from . import tls as _tls

            material = _tls.generate(self.tls_hostnames, client=self.require_client_cert)
            self._ssl_context = _tls.server_context(material, self.require_client_cert)
            self.ca_cert = material.ca_cert
            self.client_cert = material.client_cert
            self.client_key = material.client_key
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._requested_port))
            listener.listen(64)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self.context = Context()
        self.scheduler = Scheduler()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="local-sora-accept", daemon=True)
        self._accept_thread.start()
        return self

    def __enter__(self) -> "LocalSora":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Disconnect every client (close 1001 "SHUTDOWN"), stop every thread, release the engine."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            sessions = list(self._sessions)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        if self._listener is not None:
            self._listener.close()
        for session in sessions:
            session.terminate(1001, "SHUTDOWN")
        with self._lock:
            pending = list(self._sockets)  # sockets still in their HTTP phase
        for sock in pending:
            try:
                # the plain socket's shutdown (an SSLSocket's own would drop its TLS state
                # under the thread that is still using it)
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [t for t in self._threads if t.is_alive()]
            if not threads:
                break
            if time.monotonic() >= deadline:
                log.warning("local Sora: %d connection threads did not stop in time", len(threads))
                for thread in threads:
                    thread.join(1.0)
                break
            threads[0].join(max(0.0, min(0.2, deadline - time.monotonic())))
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.context is not None:
            self.context.close()

    @property
    def closed(self) -> bool:
        return self._closing

    # ---- addresses ----
    def _url_host(self) -> str:
        return "[%s]" % self.host if ":" in self.host else self.host

    @property
    def signaling_url(self) -> str:
        return "%s://%s:%d/signaling" % ("wss" if self.tls else "ws", self._url_host(), self.port)

    @property
    def api_url(self) -> str:
        return "%s://%s:%d/" % ("https" if self.tls else "http", self._url_host(), self.port)

    @property
    def viewer_url(self) -> str:
        """The browser viewer page (add ``?channel_id=...``); see `sora_sdk.testing.viewer`."""
        return self.api_url + "viewer/"

    # ---- in-process API ----
    def connections(self, channel_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Connections that completed signaling (answer applied), as dicts; all channels if None."""
        if channel_id is None:
            sessions = []
            for cid in self._registry.channel_ids():
                sessions.extend(self._registry.joined(cid))
        else:
            sessions = self._registry.joined(channel_id)
        return [s.info() for s in sessions]

    def wait_connections(self, channel_id: str, count: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Wait until `channel_id` has exactly `count` joined connections; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.connections(channel_id)
            if len(current) == count:
                return current
            if time.monotonic() >= deadline:
                raise TimeoutError("channel %s has %d connections, not %d" % (channel_id, len(current), count))
            time.sleep(0.02)

    def push(self, channel_id: str, data: Dict[str, Any]) -> int:
        """Send a push message to every connection of the channel; returns how many got it."""
        encode_json({"type": "push", "data": data})  # ValueError for data that is not JSON
        return self._registry.push(channel_id, data)

    def push_connection(self, connection_id: str, data: Dict[str, Any]) -> bool:
        encode_json({"type": "push", "data": data})
        session = self._registry.session(connection_id)
        if session is None:
            return False
        session.send_push(data)
        return True

    def disconnect(self, connection_id: str, reason: str = "DISCONNECTED-API", code: int = 1000) -> bool:
        """Close a connection from the server (as the REST DisconnectConnection does)."""
        session = self._registry.session(connection_id)
        if session is None:
            return False
        session.terminate(code, reason)
        return True

    def request_key_frame(self, connection_id: str) -> bool:
        session = self._registry.session(connection_id)
        if session is None:
            return False
        channel = self._registry.channel(session.channel_id)
        if channel is not None:
            channel.media.request_key_frame(session)
        return True

    def spotlight_focus(self, channel_id: str, connection_id: str) -> bool:
        """Spotlight: focus sender `connection_id` for every spotlight receiver of `channel_id` (it
        goes first in their order, notified ``fixed``); False if it is no sender there."""
        channel = self._registry.channel(channel_id)
        return channel is not None and channel.media.spotlight_focus(connection_id, True)

    def spotlight_unfocus(self, channel_id: str, connection_id: str) -> bool:
        """Spotlight: put sender `connection_id` last in every spotlight receiver's order."""
        channel = self._registry.channel(channel_id)
        return channel is not None and channel.media.spotlight_focus(connection_id, False)

    def stats(self, connection_id: str) -> Optional[List[Dict[str, Any]]]:
        """The server peer's statistics for a connection (None if unknown)."""
        session = self._registry.session(connection_id)
        if session is None:
            return None
        return session.stats()

    # ---- listener ----
    def _accept_loop(self) -> None:
        listener = self._listener
        listener.settimeout(0.1)  # (select() cannot watch descriptors above 1023)
        while not self._closing:
            try:
                sock, address = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closing:
                    break
                continue
            sock.settimeout(None)
            with self._lock:
                if self._closing:
                    sock.close()
                    break
                self._threads = [t for t in self._threads if t.is_alive()]
                thread = threading.Thread(target=self._serve_socket, args=(sock, address),
                                          name="local-sora-conn", daemon=True)
                self._threads.append(thread)
                self._sockets.add(sock)
            thread.start()

    def _tls_handshake(self, sock: socket.socket, address) -> Optional[ssl.SSLSocket]:
        """Wrap an accepted socket (in its own thread, bounded); None when the handshake fails."""
        sock.settimeout(10.0)
        tls_sock = self._ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._sockets.discard(sock)  # wrap_socket() took over its descriptor
            closing = self._closing
            if not closing:
                self._sockets.add(tls_sock)
        try:
            if closing:
                raise OSError("server closing")
            tls_sock.do_handshake()
        except (OSError, ValueError) as error:  # ssl.SSLError and socket.timeout included
            log.debug("local Sora: TLS handshake with %s failed: %s", address, error)
            if isinstance(error, ssl.SSLError):
                self._drain(tls_sock)
            with self._lock:
                self._sockets.discard(tls_sock)
            try:
                tls_sock.close()
            except OSError:
                pass
            return None
        tls_sock.settimeout(None)
        return tls_sock

    @staticmethod
    def _drain(sock: socket.socket, limit: float = 1.0) -> None:
        """Half-close, then read (raw bytes) until EOF or ``limit`` seconds.

        With TLS 1.3 a refused client certificate is only noticed after the client
        sent its request; closing with that request unread would reset the
        connection and the client could lose the alert that says why.
        """
        deadline = time.monotonic() + limit
        try:
            socket.socket.shutdown(sock, socket.SHUT_WR)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                if not socket.socket.recv(sock, 65536):
                    break
        except (OSError, ValueError):
            pass

    def _serve_socket(self, sock: socket.socket, address) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None:
                tls_sock = self._tls_handshake(sock, address)
                if tls_sock is None:
                    return
                sock = tls_sock
            try:
                request = websocket.read_request(sock, timeout=10.0)
            except websocket.WebSocketError:
                return
            if "websocket" in request.headers.get("upgrade", "").lower():
                self._serve_websocket(sock, request)
            else:
                self._serve_http(sock, request)
        except Exception:
            log.exception("local Sora: error while serving %s", address)
        finally:
            with self._lock:
                self._sockets.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _serve_websocket(self, sock: socket.socket, request) -> None:
        path = request.path.split("?", 1)[0]
        if path.rstrip("/") != "/signaling":
            websocket.reject(sock, 404, "Not Found", request=request)
            return
        try:
            ws = websocket.accept(sock, request=request, max_message_size=MAX_SIGNALING_MESSAGE)
        except websocket.WebSocketError:
            return
        session = Session(self, ws)
        with self._lock:
            self._sockets.discard(sock)  # from now on the session ends it
            closing = self._closing
            if not closing:
                self._sessions.add(session)
        if closing:
            ws.close(1001, "SHUTDOWN", timeout=1.0)
            return
        try:
            session.run()
        finally:
            with self._lock:
                self._sessions.discard(session)

    def _serve_http(self, sock: socket.socket, request) -> None:
        path, _, query = request.path.partition("?")
        if viewer.handles(request.method, path):
            status, content_type, payload, headers = viewer.serve(path, query, self.sora_js_sdk)
            self._respond_raw(sock, status, content_type, b"" if request.method == "HEAD" else payload,
                              headers, length=len(payload))
            return
        body = request.rest
        if request.headers.get("transfer-encoding"):
            self._respond(sock, 411, {"error_type": "LENGTH-REQUIRED", "message": "chunked bodies are not supported"})
            return
        try:
            length = int(request.headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > api.MAX_BODY:
            self._respond(sock, 400, {"error_type": "INVALID-LENGTH", "message": "bad Content-Length"})
            return
        sock.settimeout(10.0)
        try:
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                body += chunk
        except OSError:
            return
        status, result = api.handle(self, request.method, request.headers, body[:length])
        self._respond(sock, status, result)

    @classmethod
    def _respond(cls, sock: socket.socket, status: int, result: Any) -> None:
        try:
            payload = encode_json(result).encode("utf-8")
        except ValueError:
            status = 500
            payload = b'{"error_type":"INTERNAL-ERROR","message":"the result is not valid JSON"}'
        cls._respond_raw(sock, status, "application/json", payload)

    @staticmethod
    def _respond_raw(sock: socket.socket, status: int, content_type: str, payload: bytes,
                     headers: Optional[Dict[str, str]] = None, length: Optional[int] = None) -> None:
        extra = "".join("%s: %s\r\n" % item for item in (headers or {}).items())
        head = ("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s"
                "Connection: close\r\n\r\n" % (status, http.client.responses.get(status, "Error"), content_type,
                                               len(payload) if length is None else length, extra))
        try:
            sock.settimeout(10.0)
            sock.sendall(head.encode("latin-1") + payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # ---- used by sessions ----
    @property
    def registry(self) -> ChannelRegistry:
        return self._registry
