"""A small RFC 6455 WebSocket implementation (client and server side).

Blocking API on top of non-blocking sockets:

* every socket call is made under one lock and never blocks, waiting is done
  with ``poll``/``select`` outside the lock, so one thread may sit in
  :meth:`WebSocket.recv` while others send (safe for TLS sockets too);
* :meth:`WebSocket.abort` / :meth:`WebSocket.close` wake a thread blocked in
  ``recv()`` (the socket is shut down first and closed once no thread uses it).

Client: :meth:`WebSocketClient.connect` (TLS, HTTP CONNECT proxy) and
:func:`open_first` (parallel handshakes, first wins).  Server:
:func:`read_request`, :func:`accept` and :func:`reject`.  Error messages
follow boost::beast/asio wording where the official SDK reports them.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import queue
import re
import select
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

__all__ = [
    "MAX_MESSAGE_SIZE", "NO_STATUS_CODE",
    "OP_CONTINUATION", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "WebSocketError", "HandshakeError", "HandshakeTimeout", "InvalidURLError",
    "WebSocketClosed", "WebSocketEOF", "ProtocolError",
    "parse_url", "encode_frame", "accept_key",
    "WebSocket", "WebSocketClient", "ServerWebSocket", "HttpRequest",
    "open_first", "read_request", "accept", "reject",
]

#: Largest message (or frame) accepted by default: 16 MiB.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
_MAX_HTTP_HEAD = 64 * 1024
_SEND_CHUNK = 64 * 1024
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

#: Close code reported when a close frame carries no status (RFC 6455 §7.4.1).
NO_STATUS_CODE = 1005

_MSG_DECLINED = "The WebSocket handshake was declined by the remote peer"
_MSG_EOF = "End of file"
_MSG_CANCELED = "Operation canceled"


# --------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------

class WebSocketError(Exception):
    """Base class of every error raised by this module."""


class HandshakeError(WebSocketError):
    """Opening the connection failed (TCP, proxy, TLS or HTTP upgrade).

    ``message`` is asio/beast style (``"Connection refused"``, ``"The
    WebSocket handshake was declined by the remote peer"``, ...); ``status``
    is the HTTP status when the server answered; ``last_error`` and
    ``last_url`` give the ``last_ec=... last_url=...`` parts of the official
    error (``last_url`` is the URL being opened).
    """

    def __init__(self, message: str, *, status: Optional[int] = None,
                 url: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.last_error = message
        self.last_url = url


class HandshakeTimeout(HandshakeError):
    """The handshake did not finish within the connection timeout."""

    def __init__(self, message: str = "Connection timeout", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class InvalidURLError(WebSocketError, ValueError):
    """No usable ``ws://``/``wss://`` URL; message as the official SDK's.

    ``"Invalid Signaling URL: <url> | "`` once per rejected URL.
    """

    def __init__(self, urls: Iterable[str]) -> None:
        self.urls = list(urls)
        super().__init__("".join("Invalid Signaling URL: %s | " % url for url in self.urls))


class WebSocketClosed(WebSocketError):
    """The peer sent a close frame (``code`` 1005 when it had no status)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__("WebSocket closed: code=%d reason=%s" % (code, reason))
        self.code = code
        self.reason = reason


class WebSocketEOF(WebSocketError):
    """The connection ended without a close frame (EOF, reset, local abort).

    The message is asio style: ``"End of file"``, ``"Connection reset by
    peer"``, or ``"Operation canceled"`` after :meth:`WebSocket.abort`.
    """


class ProtocolError(WebSocketError):
    """The peer broke RFC 6455 (``code`` is the close code we sent it)."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------
# Helpers: URLs, frames, HTTP heads
# --------------------------------------------------------------------------

def parse_url(url: str) -> Tuple[bool, str, int, str]:
    """Split a ``ws://``/``wss://`` URL into ``(secure, host, port, resource)``.

    ``host`` has no IPv6 brackets, ``port`` defaults to 80/443 and
    ``resource`` is the path (``/`` if empty) plus ``?query`` verbatim.
    Any other scheme, a missing host or a bad port raises ``ValueError``.
    """
    if not isinstance(url, str):
        raise ValueError("Invalid URL: %r" % (url,))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("Invalid URL: %s" % url) from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("Invalid URL: %s" % url)
    secure = parts.scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return secure, parts.hostname, port or (443 if secure else 80), resource


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1((key + _GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def _apply_mask(payload: bytes, key: bytes) -> bytes:
    size = len(payload)
    if not size:
        return b""
    stream = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")
    return masked.to_bytes(size, "little")


def encode_frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    """Encode one frame (``mask=True`` for client-to-server frames)."""
    size = len(payload)
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head.append(mask_bit | size)
    elif size < 0x10000:
        head.append(mask_bit | 126)
        head += struct.pack("!H", size)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", size)
    if mask:
        key = os.urandom(4)
        head += key
        payload = _apply_mask(bytes(payload), key)
    return bytes(head) + bytes(payload)


def _host_header(host: str) -> str:
    return "[%s]" % host if ":" in host else host


def _parse_head(head: bytes) -> Tuple[List[str], Dict[str, str]]:
    """Split an HTTP head into its start line words and lower-cased headers."""
    lines = head.decode("latin-1").split("\r\n")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeError("Bad HTTP header line: %r" % line)
        name = name.strip().lower()
        value = value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    return lines[0].split(" ", 2), headers


def _has_token(value: Optional[str], token: str) -> bool:
    return value is not None and token in (part.strip().lower() for part in value.split(","))


def _remaining(deadline: Optional[float]) -> Optional[float]:
    """Seconds left before ``deadline`` (None = no limit); raises on expiry."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("timed out")
    return left


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + timeout


def _wait_socket(sock: socket.socket, for_write: bool, deadline: Optional[float]) -> None:
    """Wait until ``sock`` is readable/writable; TimeoutError after deadline."""
    try:
        timeout = _remaining(deadline)
    except socket.timeout:
        raise TimeoutError("timed out") from None
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if for_write else select.POLLIN)
        poller.poll(None if timeout is None else math.ceil(timeout * 1000))
    else:  # Windows
        watched = [sock]
        select.select([] if for_write else watched, watched if for_write else [], watched, timeout)


# Blocking helpers used while the socket is still in blocking (handshake) mode.

def _send_blocking(sock: socket.socket, data: bytes, deadline: Optional[float]) -> None:
    sock.settimeout(_remaining(deadline))
    sock.sendall(data)


def _read_http_head(sock: socket.socket, deadline: Optional[float]) -> Tuple[bytes, bytes]:
    """Read up to the blank line; returns ``(head, bytes read after it)``."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return data[:end], data[end + 4:]
        if len(data) > _MAX_HTTP_HEAD:
            raise HandshakeError("HTTP header too large")
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(4096)
        if not chunk:
            raise HandshakeError(_MSG_EOF)
        data += chunk


def _os_error_message(error: OSError) -> str:
    """asio-like text for a socket error."""
    if isinstance(error, socket.gaierror):
        if error.errno == socket.EAI_NONAME:
            return "Host not found (authoritative)"
        if error.errno == getattr(socket, "EAI_AGAIN", None):
            return "Host not found (non-authoritative), try again later"
    if error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _ssl_error_message(error: ssl.SSLError) -> str:
    """OpenSSL-reason style text, e.g. ``certificate verify failed: <why>``."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = getattr(error, "verify_message", None)
        return "certificate verify failed" + (": %s" % detail if detail else "")
    if isinstance(error, ssl.SSLEOFError):
        return "stream truncated"  # asio's name for an EOF inside TLS
    reason = getattr(error, "reason", None)
    if reason:
        return reason.replace("_", " ").lower()
    return re.sub(r" \(_ssl\.c:\d+\)$", "", str(error))


# --------------------------------------------------------------------------
# The connection object
# --------------------------------------------------------------------------

class WebSocket:
    """An open WebSocket connection (shared by client and server sides).

    ``send_text``/``send_binary``/``ping`` may be called from any thread.
    One thread at a time reads with :meth:`recv`.  After the connection has
    ended, ``recv()`` keeps raising the exception that ended it.
    """

    def __init__(self, sock: socket.socket, *, client_side: bool,
                 max_message_size: int = MAX_MESSAGE_SIZE, initial_data: bytes = b"") -> None:
        sock.setblocking(False)
        self._sock = sock
        self._client_side = client_side
        self.max_message_size = max_message_size
        #: Called with the payload of every pong received (reader thread).
        self.on_pong = None
        self._buffer = bytearray(initial_data)
        self._fragments: Optional[Tuple[int, List[bytes]]] = None
        self._fragment_size = 0
        self._send_lock = threading.Lock()   # one frame at a time on the wire
        self._recv_lock = threading.Lock()   # one reader at a time
        self._io_lock = threading.Lock()     # one socket call at a time
        self._state_lock = threading.Lock()  # the fields below
        self._io_users = 0
        self._released = False
        self._fd_closed = False
        self._close_sent = False
        self._terminal: Optional[WebSocketError] = None
        self._ended = threading.Event()

    # ---------------------------------------------------------------- state

    @property
    def closed(self) -> bool:
        """True once the connection has ended (close, EOF, error or abort)."""
        return self._ended.is_set()

    @property
    def close_sent(self) -> bool:
        """True once a close frame has been sent."""
        return self._close_sent

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return self._sock.fileno()

    def _finish(self, error: WebSocketError) -> WebSocketError:
        """Record how the connection ended (first reason wins) and return it."""
        with self._state_lock:
            if self._terminal is None:
                self._terminal = error
            self._ended.set()
            return self._terminal

    def _release(self) -> None:
        """Shut the socket down now (waking waiters) and close it when unused."""
        with self._state_lock:
            if self._released:
                return
            self._released = True
            try:  # the plain socket call: also fine for SSL sockets
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass
            self._close_fd_if_unused()

    def _close_fd_if_unused(self) -> None:
        if self._released and not self._io_users and not self._fd_closed:
            self._fd_closed = True
            self._sock.close()

    def _enter_io(self) -> None:
        with self._state_lock:
            if self._released:
                raise WebSocketEOF(_MSG_CANCELED)
            self._io_users += 1

    def _exit_io(self) -> None:
        with self._state_lock:
            self._io_users -= 1
            self._close_fd_if_unused()

    # ---------------------------------------------------------------- raw I/O

    def _recv_some(self, deadline: Optional[float]) -> bytes:
        """Read available bytes (b"" on EOF); TimeoutError after deadline."""
        self._enter_io()
        try:
            while True:
                with self._io_lock:
                    try:
                        return self._sock.recv(65536)
                    except (BlockingIOError, ssl.SSLWantReadError):
                        for_write = False
                    except ssl.SSLWantWriteError:
                        for_write = True
                _wait_socket(self._sock, for_write, deadline)
        finally:
            self._exit_io()

    def _send_all(self, data: bytes, deadline: Optional[float]) -> None:
        self._enter_io()
        try:
            view = memoryview(data)
            while view:
                chunk = view[:_SEND_CHUNK]  # retried unchanged after WANT_WRITE
                with self._io_lock:
                    try:
                        view = view[self._sock.send(chunk):]
                        continue
                    except (BlockingIOError, ssl.SSLWantWriteError):
                        for_write = True
                    except ssl.SSLWantReadError:
                        for_write = False
                _wait_socket(self._sock, for_write, deadline)
        finally:
            self._exit_io()

    # ---------------------------------------------------------------- sending

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True,
                   deadline: Optional[float] = None) -> None:
        """Send one raw frame (low level; masking is applied on the client side).

        Raises :class:`WebSocketError` ("WebSocket is closing"/"... closed")
        once a close frame was sent or the connection ended,
        :class:`WebSocketEOF` when the socket fails, and
        ``TimeoutError`` when ``deadline`` passes first.  A failed send does
        not end the connection by itself: the reader still sees how it ended.
        """
        wait = -1 if deadline is None else max(deadline - time.monotonic(), 0)
        if not self._send_lock.acquire(timeout=wait):
            raise TimeoutError("timed out")
        try:
            if self._ended.is_set() or self._close_sent:
                raise WebSocketError("WebSocket is %s" % ("closed" if self._ended.is_set()
                                                          else "closing"))
            if opcode == OP_CLOSE:
                self._close_sent = True
            frame = encode_frame(opcode, payload, mask=self._client_side, fin=fin)
            try:
                self._send_all(frame, deadline)
            except TimeoutError:  # an OSError subclass: keep it apart
                raise
            except OSError as error:  # ssl.SSLError included
                raise WebSocketEOF(_os_error_message(error)) from None
        finally:
            self._send_lock.release()

    def send_text(self, text: str) -> None:
        """Send a text message."""
        self.send_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        """Send a binary message."""
        self.send_frame(OP_BINARY, bytes(data))

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (the answer is reported to :attr:`on_pong`)."""
        self.send_frame(OP_PING, payload)

    def _send_close(self, code: Optional[int], reason: str,
                    deadline: Optional[float] = None) -> None:
        """Send our close frame unless one was sent already (errors ignored).

        The reason is cut to the 123 bytes a control frame allows, on a
        character boundary.
        """
        payload = b""
        if code is not None:
            reason_bytes = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
            payload = struct.pack("!H", code) + reason_bytes
        try:
            self.send_frame(OP_CLOSE, payload, deadline=deadline)
        except (WebSocketError, TimeoutError):
            pass

    # ---------------------------------------------------------------- receiving

    def recv(self, timeout: Optional[float] = None) -> Tuple[bool, bytes]:
        """Return the next message as ``(is_text, payload)``.

        Pings are answered, pongs reported to :attr:`on_pong`, fragments
        joined.  Raises :class:`WebSocketClosed` when the peer closed (our
        close frame is sent back first), :class:`WebSocketEOF` when the
        connection ended without one, :class:`ProtocolError` for bad frames,
        and ``TimeoutError`` after ``timeout`` seconds (the connection stays
        usable).
        """
        deadline = _deadline(timeout)
        if not self._recv_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            raise TimeoutError("timed out")
        try:
            while True:
                message = self._handle_frame(*self._next_frame(deadline))
                if message is not None:
                    return message
        finally:
            self._recv_lock.release()

    def _next_frame(self, deadline: Optional[float]) -> Tuple[bool, int, bytes]:
        while True:
            if self._terminal is not None:
                raise self._terminal
            frame = self._parse_frame()
            if frame is not None:
                return frame
            try:
                data = self._recv_some(deadline)
            except TimeoutError:  # an OSError subclass: keep it apart
                raise
            except WebSocketEOF as error:
                data, message = b"", str(error)
            except (OSError, ssl.SSLError) as error:
                data, message = b"", _os_error_message(error)
            else:
                message = _MSG_CANCELED if self._released else _MSG_EOF
            if not data:
                self._finish(WebSocketEOF(message))
                self._release()
                continue
            self._buffer += data

    def _fail(self, message: str, code: int = 1002) -> ProtocolError:
        """Protocol violation: send a close frame, drop the connection."""
        error = ProtocolError(message, code)
        if self._terminal is None:
            self._send_close(code, "", _deadline(1.0))
            self._finish(error)
            self._release()
        return error

    def _parse_frame(self) -> Optional[Tuple[bool, int, bytes]]:
        """Take one complete frame off the buffer, validating its header early."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        fin, opcode = bool(first & 0x80), first & 0x0F
        masked, size = bool(second & 0x80), second & 0x7F
        if first & 0x70:
            raise self._fail("Reserved bits set without an extension")
        if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
            raise self._fail("Unknown opcode %d" % opcode)
        if masked != (not self._client_side):
            raise self._fail("Frame from the server is masked" if self._client_side
                             else "Frame from the client is not masked")
        offset = 2
        if size >= 126:
            offset = 4 if size == 126 else 10
            if len(buffer) < offset:
                return None
            size = struct.unpack("!H" if offset == 4 else "!Q", bytes(buffer[2:offset]))[0]
        if opcode in _CONTROL_OPCODES and (size > 125 or not fin):
            raise self._fail("Bad control frame")
        if opcode not in _CONTROL_OPCODES and self._fragment_size + size > self.max_message_size:
            raise self._fail("Message too big", 1009)
        key = b""
        if masked:
            key = bytes(buffer[offset:offset + 4])
            offset += 4
        if len(buffer) < offset + size:
            return None
        payload = bytes(buffer[offset:offset + size])
        del buffer[:offset + size]
        return fin, opcode, _apply_mask(payload, key) if masked else payload

    def _handle_frame(self, fin: bool, opcode: int, payload: bytes) -> Optional[Tuple[bool, bytes]]:
        """Process one frame; returns a complete message or None."""
        if opcode == OP_CLOSE:
            raise self._on_close_frame(payload)
        if opcode == OP_PING:
            try:
                self.send_frame(OP_PONG, payload)
            except WebSocketError:
                pass  # closing: the peer does not need the pong any more
            return None
        if opcode == OP_PONG:
            if self.on_pong is not None:
                self.on_pong(payload)
            return None
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise self._fail("Continuation frame without a message")
            self._fragments[1].append(payload)
        else:
            if self._fragments is not None:
                raise self._fail("New message inside a fragmented message")
            self._fragments = (opcode, [payload])
        self._fragment_size += len(payload)
        if not fin:
            return None
        first_opcode, parts = self._fragments
        self._fragments, self._fragment_size = None, 0
        data = b"".join(parts)
        if first_opcode == OP_TEXT:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail("Invalid UTF-8 in a text message", 1007) from None
        return first_opcode == OP_TEXT, data

    def _on_close_frame(self, payload: bytes) -> WebSocketError:
        if len(payload) == 1:
            return self._fail("Bad close frame payload")
        code, reason = NO_STATUS_CODE, ""
        if payload:
            code = struct.unpack("!H", payload[:2])[0]
            if not (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) and \
                    not 3000 <= code <= 4999:
                return self._fail("Bad close code %d" % code)
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self._fail("Invalid UTF-8 in the close reason", 1007)
        # Echo the status code (an empty close answers an empty close).
        self._send_close(None if code == NO_STATUS_CODE else code, "", _deadline(1.0))
        error = self._finish(WebSocketClosed(code, reason))
        self._release()
        return error

    # ---------------------------------------------------------------- ending

    def close(self, code: int = 1000, reason: str = "",
              timeout: float = 3.0) -> Optional[Tuple[int, str]]:
        """Close handshake: send a close frame and wait for the peer's.

        Waits up to ``timeout`` seconds for the peer's close frame or EOF
        (another thread's ``recv()`` may be the one that reads it; otherwise
        incoming data is read and discarded here), then drops the socket.
        Returns the peer's ``(code, reason)``, or None (timeout, EOF, error).
        """
        deadline = _deadline(timeout)
        if self._terminal is None:
            self._send_close(code, reason, deadline)
        while not self._ended.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not self._recv_lock.acquire(timeout=min(left, 0.05)):
                continue  # another thread is reading: it will see the close
            try:
                while not self._ended.is_set():
                    self._handle_frame(*self._next_frame(deadline))
            except (WebSocketError, TimeoutError):
                pass
            finally:
                self._recv_lock.release()
        self._finish(WebSocketEOF(_MSG_CANCELED))
        self._release()
        terminal = self._terminal
        return (terminal.code, terminal.reason) if isinstance(terminal, WebSocketClosed) else None

    def abort(self) -> None:
        """Drop the TCP connection without a close frame.

        A thread blocked in ``recv()`` wakes up with
        ``WebSocketEOF("Operation canceled")``.
        """
        self._finish(WebSocketEOF(_MSG_CANCELED))
        self._release()

    def __enter__(self) -> "WebSocket":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# --------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------

def _open_tcp(host: str, port: int, deadline: Optional[float]) -> socket.socket:
    # An ASCII host goes as bytes: for a str, getaddrinfo encodes with the "idna" codec, whose first use imports
    # encodings.idna, stringprep and unicodedata (2 ms of a process's first connect). For ASCII names the codec
    # changes nothing; a name that is not ASCII still goes through it.
    address = host.encode("ascii") if host.isascii() else host
    sock = socket.create_connection((address, port), timeout=_remaining(deadline))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _open_proxy_tunnel(proxy_url: str, host: str, port: int, deadline: Optional[float],
                       username: Optional[str], password: Optional[str],
                       agent: Optional[str]) -> socket.socket:
    """Connect to an HTTP proxy and open a CONNECT tunnel to host:port."""
    parts = urlsplit(proxy_url if "://" in proxy_url else "http://" + proxy_url)
    try:
        proxy_port = parts.port or 80
    except ValueError:
        raise HandshakeError("Invalid proxy URL: %s" % proxy_url) from None
    if parts.scheme != "http" or not parts.hostname:
        raise HandshakeError("Invalid proxy URL: %s" % proxy_url)
    if username is None and parts.username is not None:
        username, password = unquote(parts.username), unquote(parts.password or "")
    sock = _open_tcp(parts.hostname, proxy_port, deadline)
    try:
        target = "%s:%d" % (_host_header(host), port)
        lines = ["CONNECT %s HTTP/1.1" % target, "Host: %s" % target]
        if agent:
            lines.append("User-Agent: %s" % agent)
        if username is not None or password is not None:
            credentials = ("%s:%s" % (username or "", password or "")).encode("utf-8")
            lines.append("Proxy-Authorization: Basic %s" % base64.b64encode(credentials).decode())
        _send_blocking(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"), deadline)
        head, rest = _read_http_head(sock, deadline)
        start, _ = _parse_head(head)
        status = int(start[1]) if len(start) > 1 and start[1].isascii() and start[1].isdigit() else 0
        if not 200 <= status < 300:
            raise HandshakeError("Proxy CONNECT failed: %s" % " ".join(start[1:]), status=status)
        if rest:
            raise HandshakeError("Unexpected data from the proxy")
        return sock
    except BaseException:
        sock.close()
        raise


def _write_private_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _tls_context(ca_cert: Optional[bytes], client_cert: Optional[bytes],
                 client_key: Optional[bytes], insecure: bool) -> ssl.SSLContext:
    """System CAs + hostname check; ``ca_cert`` adds a CA; PEM client cert."""
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if ca_cert:
        context.load_verify_locations(cadata=ca_cert.decode("latin-1"))
    if client_cert:
        # load_cert_chain() only reads files: use a private directory, delete at once.
        directory = tempfile.mkdtemp(prefix="sora-tls-")
        try:
            cert_path = os.path.join(directory, "cert.pem")
            _write_private_file(cert_path, client_cert)
            key_path = None
            if client_key:
                key_path = os.path.join(directory, "key.pem")
                _write_private_file(key_path, client_key)
            context.load_cert_chain(cert_path, key_path)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return context


class WebSocketClient(WebSocket):
    """Client side of a WebSocket (frames are masked)."""

    #: The URL given to :meth:`connect`.
    url: str
    #: Headers of the 101 response (lower-cased names).
    response_headers: Dict[str, str]

    @classmethod
    def connect(cls, url: str, *, timeout: Optional[float] = 30.0,
                user_agent: Optional[str] = None,
                ca_cert: Optional[bytes] = None, client_cert: Optional[bytes] = None,
                client_key: Optional[bytes] = None, insecure: bool = False,
                proxy_url: Optional[str] = None, proxy_username: Optional[str] = None,
                proxy_password: Optional[str] = None, proxy_agent: Optional[str] = None,
                max_message_size: int = MAX_MESSAGE_SIZE) -> "WebSocketClient":
        """Open ``url`` and perform the upgrade; raises :class:`HandshakeError`.

        The request carries exactly ``Host`` (no port), ``Upgrade``,
        ``Connection``, ``Sec-WebSocket-Key``, ``Sec-WebSocket-Version`` and,
        when given, ``User-Agent``.  ``timeout`` bounds the whole handshake
        (TCP, proxy, TLS, HTTP) and raises :class:`HandshakeTimeout`.  A bad
        URL raises :class:`InvalidURLError`.
        """
        try:
            secure, host, port, resource = parse_url(url)
        except ValueError:
            raise InvalidURLError([url]) from None
        deadline = _deadline(timeout)
        sock: Optional[socket.socket] = None
        try:
            if proxy_url:
                sock = _open_proxy_tunnel(proxy_url, host, port, deadline, proxy_username,
                                          proxy_password, proxy_agent)
            else:
                sock = _open_tcp(host, port, deadline)
            if secure:
                context = _tls_context(ca_cert, client_cert, client_key, insecure)
                sock.settimeout(_remaining(deadline))
                sock = context.wrap_socket(sock, server_hostname=host)
            key = base64.b64encode(os.urandom(16)).decode("ascii")
            lines = [
                "GET %s HTTP/1.1" % resource,
                "Host: %s" % _host_header(host),
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: %s" % key,
                "Sec-WebSocket-Version: 13",
            ]
            if user_agent is not None:
                lines.append("User-Agent: %s" % user_agent)
            _send_blocking(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"), deadline)
            head, rest = _read_http_head(sock, deadline)
            headers = _check_upgrade_response(head, key)
        except BaseException as error:
            if sock is not None:
                sock.close()
            raise _handshake_error(error, url) from None
        client = cls(sock, client_side=True, max_message_size=max_message_size,
                     initial_data=rest)
        client.url = url
        client.response_headers = headers
        return client


def _handshake_error(error: BaseException, url: str) -> BaseException:
    """Turn any handshake failure into a HandshakeError for ``url``."""
    if isinstance(error, HandshakeError):
        result = error
    elif isinstance(error, (socket.timeout, TimeoutError)):
        result = HandshakeTimeout()
    elif isinstance(error, ssl.SSLError):
        result = HandshakeError(_ssl_error_message(error))
    elif isinstance(error, OSError):
        result = HandshakeError(_os_error_message(error))
    else:
        return error  # KeyboardInterrupt, programming errors: unchanged
    result.last_url = url
    return result


def _check_upgrade_response(head: bytes, key: str) -> Dict[str, str]:
    start, headers = _parse_head(head)
    status = int(start[1]) if len(start) > 1 and start[1].isascii() and start[1].isdigit() else 0
    if status != 101:
        raise HandshakeError(_MSG_DECLINED, status=status)
    if "upgrade" not in headers:
        raise HandshakeError("The WebSocket handshake Upgrade field is missing")
    if not _has_token(headers["upgrade"], "websocket"):
        raise HandshakeError("The WebSocket handshake Upgrade field is missing the websocket token")
    if "connection" not in headers:
        raise HandshakeError("The WebSocket handshake Connection field is missing")
    if not _has_token(headers["connection"], "upgrade"):
        raise HandshakeError(
            "The WebSocket handshake Connection field is missing the upgrade token")
    if "sec-websocket-accept" not in headers:
        raise HandshakeError("The WebSocket handshake Sec-WebSocket-Accept field is missing")
    if headers["sec-websocket-accept"] != accept_key(key):
        raise HandshakeError("The WebSocket handshake Sec-WebSocket-Accept field is invalid")
    return headers


def open_first(urls: Iterable[str], **connect_kwargs: Any) -> Tuple[WebSocketClient, str]:
    """Handshake with every URL in parallel; the first success wins.

    Returns ``(client, url)``.  Every later successful handshake is closed
    with a normal close (1000, empty reason) in the background.  URLs whose
    scheme is not ws/wss are skipped; if none is usable
    :class:`InvalidURLError` is raised.  If every handshake fails, the last
    failure (a :class:`HandshakeError` with ``last_error``/``last_url``) is
    raised.  ``connect_kwargs`` go to :meth:`WebSocketClient.connect`.
    """
    usable, invalid = [], []
    for url in urls:
        try:
            parse_url(url)
        except ValueError:
            invalid.append(url)
        else:
            usable.append(url)
    if not usable:
        raise InvalidURLError(invalid)

    results: "queue.Queue[Tuple[str, Optional[WebSocketClient], Optional[BaseException]]]" = \
        queue.Queue()
    winner_lock = threading.Lock()
    winner: List[WebSocketClient] = []

    def attempt(url: str) -> None:
        try:
            client = WebSocketClient.connect(url, **connect_kwargs)
        except BaseException as error:  # reported to the waiting caller
            results.put((url, None, error))
            return
        with winner_lock:
            won = not winner
            if won:
                winner.append(client)
        if won:
            results.put((url, client, None))
        else:
            client.close(1000, "")

    for url in usable:
        threading.Thread(target=attempt, args=(url,), name="ws-open " + url, daemon=True).start()
    for _ in usable:
        url, client, error = results.get()
        if client is not None:
            return client, url
        if not isinstance(error, HandshakeError):
            raise error  # type: ignore[misc]
    raise error  # type: ignore[misc]  # the last handshake failure


# --------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------

class HttpRequest:
    """An HTTP request head read by :func:`read_request`.

    ``headers`` has lower-cased names; ``raw`` is the head as received
    (without the final blank line); ``rest`` holds bytes read past it.
    """

    def __init__(self, method: str, path: str, version: str, headers: Dict[str, str],
                 raw: bytes, rest: bytes) -> None:
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers
        self.raw = raw
        self.rest = rest


def read_request(sock: socket.socket, *, timeout: Optional[float] = 10.0) -> HttpRequest:
    """Read an HTTP request head from a blocking socket."""
    deadline = _deadline(timeout)
    try:
        head, rest = _read_http_head(sock, deadline)
    except (socket.timeout, TimeoutError):
        raise HandshakeTimeout() from None
    except OSError as error:
        raise HandshakeError(_os_error_message(error)) from None
    start, headers = _parse_head(head)
    if len(start) != 3:
        raise HandshakeError("Bad HTTP request line")
    return HttpRequest(start[0], start[1], start[2], headers, head, rest)


class ServerWebSocket(WebSocket):
    """Server side of a WebSocket (client frames must be masked)."""

    def __init__(self, sock: socket.socket, request: HttpRequest, *,
                 max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        super().__init__(sock, client_side=False, max_message_size=max_message_size,
                         initial_data=request.rest)
        self.request = request
        self.path = request.path
        self.headers = request.headers


def _upgrade_problem(request: HttpRequest) -> Optional[str]:
    headers = request.headers
    if request.method != "GET" or request.version != "HTTP/1.1":
        return "Not an HTTP/1.1 GET request"
    if not _has_token(headers.get("upgrade"), "websocket"):
        return "Missing Upgrade: websocket"
    if not _has_token(headers.get("connection"), "upgrade"):
        return "Missing Connection: Upgrade"
    if headers.get("sec-websocket-version") != "13":
        return "Unsupported Sec-WebSocket-Version"
    try:
        if len(base64.b64decode(headers.get("sec-websocket-key", ""), validate=True)) != 16:
            return "Bad Sec-WebSocket-Key"
    except ValueError:
        return "Bad Sec-WebSocket-Key"
    return None


def accept(sock: socket.socket, *, request: Optional[HttpRequest] = None,
           max_message_size: int = MAX_MESSAGE_SIZE,
           timeout: Optional[float] = 10.0) -> ServerWebSocket:
    """Complete the server side of the upgrade on a connected socket.

    Reads the request unless ``request`` (from :func:`read_request`) is
    given.  Tolerates a Host without port and no Origin/subprotocol.  An
    invalid upgrade request is answered with 400 and raises HandshakeError.
    """
    if request is None:
        request = read_request(sock, timeout=timeout)
    problem = _upgrade_problem(request)
    if problem is not None:
        reject(sock, 400, "Bad Request", request=request)
        raise HandshakeError(problem)
    response = ("HTTP/1.1 101 Switching Protocols\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                "Sec-WebSocket-Accept: %s\r\n\r\n"
                % accept_key(request.headers["sec-websocket-key"]))
    try:
        _send_blocking(sock, response.encode("ascii"), _deadline(timeout))
    except OSError as error:
        raise HandshakeError(_os_error_message(error)) from None
    return ServerWebSocket(sock, request, max_message_size=max_message_size)


def reject(sock: socket.socket, status_code: int, reason: str = "", *,
           request: Optional[HttpRequest] = None, body: bytes = b"",
           timeout: Optional[float] = 2.0) -> None:
    """Answer the upgrade with a non-101 HTTP response and close the socket."""
    try:
        if request is None:
            try:
                read_request(sock, timeout=timeout)
            except HandshakeError:
                pass
        head = ("HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status_code, reason, len(body)))
        _send_blocking(sock, head.encode("latin-1") + body, _deadline(timeout))
        socket.socket.shutdown(sock, socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()
