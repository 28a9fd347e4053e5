"""A small programmable Sora-like signaling server for tests (loopback only).

Not the product server (that one lives in ``sora_sdk.testing``): this one does
exactly what a test script tells it, including things a real Sora never does
(garbage, oversized frames, dropped TCP connections, HTTP errors).

    server = ScriptedServer([expect("connect"), offer(), answer(), notify_created()])
    conn = sora.create_connection(signaling_urls=[server.url], ...)
    ...
    session = server.wait_session()          # one Session per accepted WebSocket
    session.messages                          # everything the client sent, timestamped
    server.stop()

A script is a list of steps; a step is any callable taking the Session (the
helpers below build the common ones). Steps run in order on a per-connection
thread once the WebSocket is open. A script may also be a single callable
``script(session)``. After the script, the session stays open: the reader
thread keeps recording and, unless ``ignore_disconnect()`` ran, answers the
client's ``disconnect`` with close(1000, "TYPE-DISCONNECT") as Sora does.

``handshake`` decides what happens before the WebSocket exists: "accept"
(default), an int HTTP status (e.g. 403) to decline the upgrade, "silent" to
accept the TCP connection and never answer, "close" to drop it at once.

Also here: ``Recorder``, which records every callback of a client
``SoraConnection`` (with the thread each ran on) and lets a test wait for them.
"""
from __future__ import annotations

import atexit
import json
import re
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pytest

from sora_sdk import websocket as wsm

WAIT = 10.0  # default bound for "should happen now" waits

VP8_CAPS = "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"
OPUS_CAPS = ("application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
             "encoding-params=(string)2")
CONNECTION_ID = "SCRIPTEDCONNECTION00000001"  # 26 chars, like Sora's connection ids


class ScriptAborted(Exception):
    """The client ended the session while a step was waiting."""


# --------------------------------------------------------------------------
# Server-side engine context (for real offers), one per process
# --------------------------------------------------------------------------

_context_lock = threading.Lock()
_context = None


def server_context():
    """The engine Context used by server-side peers (created on first use, closed at exit)."""
    global _context
    with _context_lock:
        if _context is None:
            from sora_sdk.context import Context

            _context = Context()
        return _context


@atexit.register
def close_server_context() -> None:
    global _context
    with _context_lock:
        context, _context = _context, None
    if context is not None:
        context.close()


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------

class Message:
    """One message the client sent: ``t`` (monotonic), ``is_text``, raw ``data``, parsed ``json`` (or None)."""

    __slots__ = ("t", "is_text", "data", "json")

    def __init__(self, t: float, is_text: bool, data: bytes) -> None:
        self.t = t
        self.is_text = is_text
        self.data = data
        try:
            self.json = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):
            self.json = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    @property
    def type(self) -> Optional[str]:
        return self.json.get("type") if isinstance(self.json, dict) else None

    def __repr__(self) -> str:
        return "Message(%s)" % self.text[:120]


class Session:
    """One accepted WebSocket connection and what happened on it."""

    def __init__(self, server: "ScriptedServer", index: int, sock: socket.socket,
                 ws: wsm.ServerWebSocket) -> None:
        self.server = server
        self.index = index
        self.sock = sock
        self.ws = ws
        self.request = ws.request
        self.t0 = time.monotonic()
        self.messages: List[Message] = []
        self.sent: List[Tuple[float, str]] = []
        #: What the script sent: whole texts for text messages, a short description otherwise.
        #: How the client side ended: ("close", code, reason), ("eof", detail), ("protocol", detail)
        #: or ("server", what) when the server ended it.
        self.end: Optional[Tuple[Any, ...]] = None
        self.ended = threading.Event()
        self.auto_close_on_disconnect = True
        self.disconnect_close: Tuple[int, str] = (1000, "TYPE-DISCONNECT")
        self.script_error: Optional[BaseException] = None
        self.script_done = threading.Event()
        self.peer = None
        self.connection_id = CONNECTION_ID
        self.offer_sdp: Optional[str] = None
        self.answer_applied = False
        self.candidates_added = 0
        self._cond = threading.Condition()
        self._stop_reading = threading.Event()
        self._reader_thread: Optional[threading.Thread] = None

    # ---------------------------------------------------------------- waiting
    def wait_message(self, type_: Optional[str] = None, timeout: float = WAIT, start: int = 0) -> Message:
        """The first client message (from index ``start``) whose JSON ``type`` is ``type_`` (any if None)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages[start:]:
                    if type_ is None or message.type == type_:
                        return message
                if self.ended.is_set():
                    raise ScriptAborted("session %d ended (%r) before a %r message" % (self.index, self.end, type_))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no %r message from the client within %.1f s (got %r)"
                                       % (type_, timeout, self.types()))
                self._cond.wait(min(left, 0.1))

    def wait_end(self, timeout: float = WAIT) -> Tuple[Any, ...]:
        if not self.ended.wait(timeout):
            raise TimeoutError("session %d did not end within %.1f s" % (self.index, timeout))
        assert self.end is not None
        return self.end

    def types(self) -> List[Optional[str]]:
        with self._cond:
            return [m.type for m in self.messages]

    def of_type(self, type_: str) -> List[Message]:
        with self._cond:
            return [m for m in self.messages if m.type == type_]

    # ---------------------------------------------------------------- sending
    def _note(self, what: str) -> None:
        self.sent.append((time.monotonic(), what))

    def send(self, message: Union[str, dict, list, Any]) -> str:
        """Send a text frame: a str as is, anything else as compact JSON; returns the text sent."""
        text = message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))
        self._note(text)
        self.ws.send_text(text)
        return text

    def sent_texts(self, prefix: str = "") -> List[str]:
        """Texts sent by the script (whole), optionally only those starting with ``prefix``."""
        return [what for _, what in self.sent if what.startswith(prefix)]

    def send_binary(self, data: bytes) -> None:
        self._note("binary %d bytes" % len(data))
        self.ws.send_binary(data)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        """One raw frame (no validation: e.g. a text frame with invalid UTF-8)."""
        self._note("frame op=%d %d bytes" % (opcode, len(payload)))
        self.ws.send_frame(opcode, payload, fin=fin)

    def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the TCP socket (bypassing the WebSocket framing)."""
        self._note("raw %d bytes" % len(data))
        self.sock.sendall(data)

    def close(self, code: int = 1000, reason: str = "", timeout: float = 3.0) -> None:
        """Close handshake from the server side."""
        self._note("close %d %s" % (code, reason))
        self.ws.close(code, reason, timeout=timeout)
        self._set_end(("server", "close", code, reason))

    def drop(self, reset: bool = False) -> None:
        """End the TCP connection without a close frame (FIN, or RST when ``reset``)."""
        self._note("drop%s" % (" (reset)" if reset else ""))
        if reset:
            # The reader must be out of poll() first: a polled fd is not released by close(),
            # so the RST would only go out much later.
            self._stop_reading.set()
            if self._reader_thread is not None and self._reader_thread is not threading.current_thread():
                self._reader_thread.join(2.0)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            try:
                socket.socket.close(self.sock)
            except OSError:
                pass
        self.ws.abort()
        self._set_end(("server", "drop"))

    # ---------------------------------------------------------------- offers
    def make_offer(self, direction: str = "recvonly", video: bool = True, audio: bool = True) -> str:
        """A real offer SDP from a server-side Peer (candidates inside after gathering)."""
        from sora_sdk.peer import Peer

        if self.peer is None:
            self.peer = Peer(server_context(), on_event=None)
            if video:
                self.peer.add_transceiver("video", direction, VP8_CAPS)
            if audio:
                self.peer.add_transceiver("audio", direction, OPUS_CAPS)
        self.peer.create_offer()
        self.peer.wait_gathering_complete(5.0)
        sdp = self.peer.local_description()
        self.offer_sdp = sdp
        return sdp

    def offer_message(self, sdp: str, **extra: Any) -> Dict[str, Any]:
        message: Dict[str, Any] = {"type": "offer", "sdp": sdp, "connection_id": self.connection_id,
                                   "config": {"iceServers": []}}
        mids = {}
        for section in re.split(r"\r?\n(?=m=)", sdp)[1:]:
            kind = section[2:].split(" ", 1)[0]
            found = re.search(r"^a=mid:(\S+)", section, re.M)
            if found and kind in ("audio", "video") and kind not in mids:
                mids[kind] = found.group(1)
        if mids:
            message["mid"] = mids
        message.update(extra)
        return message

    def apply_answer(self, sdp: str) -> None:
        """Apply the client's answer, then the candidates it trickled so far (later ones as they come)."""
        if self.peer is None:
            return
        self.peer.set_remote_description("answer", sdp)
        with self._cond:
            self.answer_applied = True
            early = [m for m in self.messages if m.type == "candidate"]
        for message in early:
            self._add_candidate(message)

    def _add_candidate(self, message: Message) -> None:
        candidate = message.json.get("candidate")
        if isinstance(candidate, str) and self.peer is not None:
            try:
                self.peer.add_ice_candidate(0, candidate)
                self.candidates_added += 1
            except Exception:
                pass

    # ---------------------------------------------------------------- internals
    def _set_end(self, end: Tuple[Any, ...]) -> None:
        with self._cond:
            if self.end is None:
                self.end = end
            self.ended.set()
            self._cond.notify_all()

    def _reader(self) -> None:
        ws = self.ws
        while True:
            try:
                is_text, data = ws.recv(timeout=0.1)
            except TimeoutError:  # polls, so that drop(reset=True) can take the socket over
                if self._stop_reading.is_set():
                    return
                continue
            except wsm.WebSocketClosed as exc:
                self._set_end(("close", exc.code, exc.reason))
                return
            except wsm.ProtocolError as exc:
                self._set_end(("protocol", str(exc)))
                return
            except (wsm.WebSocketError, OSError) as exc:
                self._set_end(("eof", str(exc)))
                return
            message = Message(time.monotonic(), is_text, data)
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()
                add_now = message.type == "candidate" and self.answer_applied
            kind = message.type
            if add_now:
                self._add_candidate(message)
            elif kind == "disconnect" and self.auto_close_on_disconnect:
                code, reason = self.disconnect_close
                try:
                    ws.close(code, reason, timeout=3.0)
                except Exception:
                    pass
                self._set_end(("server", "close", code, reason))
                return

    def _run_script(self, script) -> None:
        try:
            if callable(script):
                script(self)
            else:
                for step in script:
                    step(self)
        except BaseException as exc:  # recorded for the test to look at
            self.script_error = exc
        finally:
            self.script_done.set()

    def _shutdown(self) -> None:
        if not self.ended.is_set():
            self.ws.abort()
            self._set_end(("server", "stopped"))
        peer, self.peer = self.peer, None
        if peer is not None:
            try:
                peer.close()
            except Exception:
                pass


Script = Union[Sequence[Callable[[Session], Any]], Callable[[Session], Any], None]


class ScriptedServer:
    """Listens on 127.0.0.1:<free port>; every accepted WebSocket runs ``script``."""

    def __init__(self, script: Script = None, *, handshake: Union[str, int] = "accept",
                 path: str = "/signaling") -> None:
        self.script = default_script() if script is None else script
        self.handshake = handshake
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.url = "ws://127.0.0.1:%d%s" % (self.port, path)
        self.sessions: List[Session] = []
        self.tcp_accepts = 0
        self.requests: List[wsm.HttpRequest] = []  # every upgrade request, also declined ones
        self._held: List[socket.socket] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept_loop, name="scripted-accept-%d" % self.port,
                                        daemon=True)
        self._thread.start()

    def __enter__(self) -> "ScriptedServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_session(self, index: int = 0, timeout: float = WAIT) -> Session:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.sessions) <= index:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no WebSocket session #%d on %s within %.1f s" % (index, self.url, timeout))
                self._cond.wait(left)
            return self.sessions[index]

    def wait_tcp(self, count: int = 1, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.tcp_accepts < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("fewer than %d TCP connections on %s" % (count, self.url))
                self._cond.wait(left)

    def stop(self) -> None:
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            sessions = list(self.sessions)
            held, self._held = self._held, []
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
        except OSError:
            pass
        try:
            self.listener.close()
        except OSError:
            pass
        for sock in held:
            try:
                sock.close()
            except OSError:
                pass
        for session in sessions:
            session._shutdown()
        self._thread.join(2.0)

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._cond:
                if self._stopped:
                    sock.close()
                    return
                self.tcp_accepts += 1
                self._cond.notify_all()
            threading.Thread(target=self._serve, args=(sock,), name="scripted-conn-%d" % self.port,
                             daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        mode = self.handshake
        if mode == "silent":
            with self._cond:
                self._held.append(sock)
            return
        if mode == "close":
            sock.close()
            return
        try:
            request = wsm.read_request(sock, timeout=5.0)
        except wsm.WebSocketError:
            sock.close()
            return
        with self._cond:
            self.requests.append(request)
        if isinstance(mode, int):
            wsm.reject(sock, mode, "Forbidden" if mode == 403 else "Error", request=request)
            return
        try:
            ws = wsm.accept(sock, request=request, max_message_size=64 * 1024 * 1024)
        except wsm.WebSocketError:
            sock.close()
            return
        with self._cond:
            if self._stopped:
                ws.abort()
                return
            session = Session(self, len(self.sessions), sock, ws)
            self.sessions.append(session)
            self._cond.notify_all()
        session._reader_thread = threading.Thread(target=session._reader, name="scripted-read-%d" % self.port,
                                                  daemon=True)
        session._reader_thread.start()
        session._run_script(self.script)


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------

def expect(type_: Optional[str] = "connect", timeout: float = WAIT) -> Callable[[Session], Message]:
    """Wait for the client's next message of this type (searching everything received so far)."""
    return lambda s: s.wait_message(type_, timeout)


def send(message: Any) -> Callable[[Session], None]:
    """Send raw text (str) or JSON (anything else) as one text frame."""
    return lambda s: s.send(message)


def send_binary(data: bytes) -> Callable[[Session], None]:
    return lambda s: s.send_binary(data)


def send_frame(opcode: int, payload: bytes, fin: bool = True) -> Callable[[Session], None]:
    return lambda s: s.send_frame(opcode, payload, fin)


def send_raw(data: bytes) -> Callable[[Session], None]:
    return lambda s: s.send_raw(data)


def send_big(size: int, binary: bool = False) -> Callable[[Session], None]:
    """One frame of ``size`` bytes ("x"s); send errors (the client hanging up) are ignored."""

    def step(s: Session) -> None:
        s._note("big frame %d bytes" % size)
        try:
            s.ws.send_frame(wsm.OP_BINARY if binary else wsm.OP_TEXT, b"x" * size)
        except (wsm.WebSocketError, OSError):
            pass
    return step


def offer(direction: str = "recvonly", video: bool = True, audio: bool = True,
          **extra: Any) -> Callable[[Session], None]:
    """Send a real offer made by a server-side Peer; ``extra`` keys are added to (or replace) the JSON."""

    def step(s: Session) -> None:
        s.send(s.offer_message(s.make_offer(direction, video, audio), **extra))
    return step


def raw_offer(**fields: Any) -> Callable[[Session], None]:
    """An offer with exactly these fields (``type`` is added); for malformed-offer tests."""
    return send(dict({"type": "offer"}, **fields))


def answer(timeout: float = WAIT, apply: bool = True) -> Callable[[Session], Message]:
    """Wait for the client's answer and apply it to the server peer."""

    def step(s: Session) -> Message:
        message = s.wait_message("answer", timeout)
        if apply:
            s.apply_answer(message.json["sdp"])
        return message
    return step


def reoffer(type_: str = "re-offer") -> Callable[[Session], None]:
    """A renegotiation offer from the server peer ("re-offer" or legacy "update")."""

    def step(s: Session) -> None:
        s.send({"type": type_, "sdp": s.make_offer()})
    return step


def notify(event_type: str = "connection.created", **fields: Any) -> Callable[[Session], None]:
    def step(s: Session) -> None:
        message = {"type": "notify", "event_type": event_type, "connection_id": s.connection_id,
                   "role": "sendonly", "channel_connections": 1}
        message.update(fields)
        s.send(message)
    return step


def notify_created(**fields: Any) -> Callable[[Session], None]:
    return notify("connection.created", **fields)


def push(data: Any = None) -> Callable[[Session], None]:
    return send({"type": "push", "data": {"hello": "world"} if data is None else data})


def ping(stats: bool = False) -> Callable[[Session], None]:
    return send({"type": "ping", "stats": True} if stats else {"type": "ping"})


def close(code: int = 1000, reason: str = "") -> Callable[[Session], None]:
    return lambda s: s.close(code, reason)


def drop(reset: bool = False) -> Callable[[Session], None]:
    """Drop the TCP connection without a close frame."""
    return lambda s: s.drop(reset)


def redirect(target: Union[str, "ScriptedServer"], close_after: bool = True) -> Callable[[Session], None]:
    """Send {"type":"redirect","location":...} then close the socket (as Sora does)."""

    def step(s: Session) -> None:
        location = target.url if isinstance(target, ScriptedServer) else target
        s.send({"type": "redirect", "location": location})
        if close_after:
            try:
                s.close(1000, "", timeout=2.0)
            except (wsm.WebSocketError, OSError):
                pass
    return step


def ignore_disconnect() -> Callable[[Session], None]:
    """Do not answer the client's disconnect (the client's close timeout must fire)."""

    def step(s: Session) -> None:
        s.auto_close_on_disconnect = False
    return step


def on_disconnect_close(code: int, reason: str) -> Callable[[Session], None]:
    """Answer the client's disconnect with this close code/reason instead of 1000 TYPE-DISCONNECT."""

    def step(s: Session) -> None:
        s.disconnect_close = (code, reason)
    return step


def sleep(seconds: float) -> Callable[[Session], None]:
    return lambda s: time.sleep(seconds)


def wait_event(event: threading.Event, timeout: float = WAIT) -> Callable[[Session], None]:
    """Block the script until the test sets ``event``."""

    def step(s: Session) -> None:
        if not event.wait(timeout):
            raise TimeoutError("the test did not release the script")
    return step


def default_script() -> List[Callable[[Session], Any]]:
    """A well-behaved Sora: connect → offer → answer → connection.created notify."""
    return [expect("connect"), offer(), answer(), notify_created()]


# --------------------------------------------------------------------------
# Client side: record every callback of a SoraConnection
# --------------------------------------------------------------------------

class Event:
    __slots__ = ("t", "name", "args", "thread")

    def __init__(self, t: float, name: str, args: tuple, thread: threading.Thread) -> None:
        self.t = t
        self.name = name
        self.args = args
        self.thread = thread

    def __repr__(self) -> str:
        return "%s%r" % (self.name, tuple(a[:80] if isinstance(a, str) else a for a in self.args))


CALLBACKS = ("on_set_offer", "on_ws_close", "on_disconnect", "on_signaling_message", "on_notify", "on_push",
             "on_message", "on_rpc", "on_switched", "on_track", "on_data_channel")


class Recorder:
    """Sets every callback of ``conn`` to record (time, name, args, thread); ``hooks[name]`` run after."""

    def __init__(self, conn, hooks: Optional[Dict[str, Callable[..., Any]]] = None) -> None:
        self.conn = conn
        self.events: List[Event] = []
        self.hooks = dict(hooks or {})
        self._cond = threading.Condition()
        for name in CALLBACKS:
            setattr(conn, name, self._make(name))

    def _make(self, name: str) -> Callable[..., None]:
        def callback(*args: Any) -> None:
            with self._cond:
                self.events.append(Event(time.monotonic(), name, args, threading.current_thread()))
                self._cond.notify_all()
            hook = self.hooks.get(name)
            if hook is not None:
                hook(*args)
        return callback

    def of(self, name: str) -> List[tuple]:
        with self._cond:
            return [e.args for e in self.events if e.name == name]

    def names(self) -> List[str]:
        with self._cond:
            return [e.name for e in self.events]

    def wait(self, name: str, timeout: float = WAIT, count: int = 1) -> tuple:
        """Args of the ``count``-th ``name`` event (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e.args for e in self.events if e.name == name]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no %s (#%d) within %.1f s; events: %r" % (name, count, timeout, self.events))
                self._cond.wait(left)

    def wait_disconnect(self, timeout: float = WAIT) -> Tuple[Any, str]:
        code, message = self.wait("on_disconnect", timeout)
        return code, message

    def signaling(self) -> List[Tuple[str, str, str]]:
        """on_signaling_message as (type name, direction name, JSON type) triples."""
        out = []
        for kind, direction, text in self.of("on_signaling_message"):
            try:
                mtype = json.loads(text).get("type")
            except ValueError:
                mtype = None
            out.append((kind.name, direction.name, mtype))
        return out


# --------------------------------------------------------------------------
# pytest fixtures (import them into a test module to use them)
# --------------------------------------------------------------------------

CLIENT_DEFAULTS = {"role": "sendonly", "channel_id": "scripted", "websocket_close_timeout": 1,
                   "disconnect_wait_timeout": 1, "websocket_connection_timeout": 5}


@pytest.fixture(autouse=False)
def hang_guard():
    """Kill the run with a traceback if one test hangs (a hang must never stall CI silently)."""
    import faulthandler

    try:
        faulthandler.dump_traceback_later(90, exit=True)
    except (AttributeError, RuntimeError):  # not available on this interpreter
        yield
        return
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def sora():
    import sora_sdk

    instance = sora_sdk.Sora()
    yield instance
    instance.close()


@pytest.fixture
def make_server():
    """make_server(script=None, handshake="accept") -> a started ScriptedServer, stopped at teardown."""
    servers: List[ScriptedServer] = []

    def make(script: Script = None, **kwargs: Any) -> ScriptedServer:
        server = ScriptedServer(script, **kwargs)
        servers.append(server)
        return server
    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_client(sora):
    """make_client(urls, hooks=None, **create_connection kwargs) -> (conn, Recorder), disconnected at teardown.

    ``urls`` is a URL, a ScriptedServer or a list of either. Small timeouts by default.
    """
    made = []

    def make(urls: Any, hooks: Optional[Dict[str, Callable[..., Any]]] = None, **kwargs: Any):
        if not isinstance(urls, list):
            urls = [urls]
        urls = [u.url if isinstance(u, ScriptedServer) else u for u in urls]
        options = dict(CLIENT_DEFAULTS)
        options.update(kwargs)
        conn = sora.create_connection(signaling_urls=urls, **options)
        recorder = Recorder(conn, hooks)
        made.append(conn)
        return conn, recorder
    yield make
    for conn in made:
        conn.disconnect()
