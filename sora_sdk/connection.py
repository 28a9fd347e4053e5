"""SoraConnection: one connection to a Sora channel (signaling + one peer connection).

Threads: `connect()` opens the WebSocket(s) on a short-lived thread; one reader
thread per WebSocket receives frames. Neither touches the connection's state:
both post work to the Sora instance's dispatcher thread, where every message is
handled and every user callback runs, in order. The peer connection's engine
events arrive on that same thread.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from . import codec as codec_mod
from . import sdp as sdp_parser
from ._reaper import later
from .callbacks import CallbackProperty, invoke_in
from . import stats as stats_mod
from .datachannels import DataChannels
from .enums import SoraDegradationPreference, SoraSignalingDirection, SoraSignalingErrorCode, SoraSignalingType
from .errors import SoraError, SoraInvalidArgument, SoraInvalidState
from .media.track import SoraMediaTrack, random_track_id
from .peer import Peer
from .websocket import (HandshakeError, HandshakeTimeout, InvalidURLError, ProtocolError, WebSocketClosed,
                        WebSocketEOF, WebSocketError, open_first)

log = logging.getLogger("sora_sdk")

Code = SoraSignalingErrorCode
WS = SoraSignalingType.WEBSOCKET
DC = SoraSignalingType.DATACHANNEL
SENT = SoraSignalingDirection.SENT
RECEIVED = SoraSignalingDirection.RECEIVED

INIT, CONNECTING, CONNECTED, CLOSING, CLOSED = "init", "connecting", "connected", "closing", "closed"
GRACEFUL = "The WebSocket stream was gracefully closed at both endpoints"
DISCONNECT_MESSAGE = '{"type":"disconnect","reason":"NO-ERROR"}'
MAX_INLINE_CANDIDATES = 64

CALLBACK_NAMES = ("on_set_offer", "on_ws_close", "on_disconnect", "on_signaling_message", "on_notify", "on_push",
                  "on_message", "on_rpc", "on_switched", "on_track", "on_data_channel")


def _is_loopback_host(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _utf8(text: str) -> bool:
    """False for strings that cannot be UTF-8 (JSON's \\ud800-style escapes give lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ice_servers(config: dict):
    """(stun-server, turn-server) URIs for webrtcbin from the offer's iceServers."""
    stun = turn = None
    for server in config.get("iceServers") or []:
        for url in server.get("urls") or []:
            scheme, _, rest = url.partition(":")
            rest = rest.split("?")[0]
            if scheme == "stun" and stun is None:
                stun = "stun://" + rest
            elif scheme in ("turn", "turns") and turn is None:
                from urllib.parse import quote

                user = quote(server.get("username") or "", safe="")
                cred = quote(server.get("credential") or "", safe="")
                turn = "%s://%s:%s@%s" % (scheme, user, cred, rest)
    return stun, turn


def _invalid_offer(message: dict) -> Optional[str]:
    """Why an offer cannot be used (the official SDK aborts the process on these), or None."""
    if not isinstance(message.get("sdp"), str):
        return "offer has no sdp string"
    if "\x00" in message["sdp"]:
        return "offer sdp contains a NUL character"
    if not _utf8(message["sdp"]):
        return "offer sdp is not valid Unicode (lone surrogate)"
    if not isinstance(message.get("connection_id"), str):
        return "offer has no connection_id string"
    config = message.get("config")
    if not isinstance(config, dict):
        return "offer has no config object"
    servers = config.get("iceServers", [])
    if not isinstance(servers, list):
        return "offer config.iceServers is not an array"
    for server in servers:
        if not isinstance(server, dict) or not isinstance(server.get("urls"), list) or not all(
                isinstance(u, str) for u in server["urls"]):
            return "offer config.iceServers entry without a urls array of strings"
        for key in ("username", "credential"):
            if key in server and not isinstance(server[key], str):
                return "offer config.iceServers entry with a non-string %s" % key
        texts = server["urls"] + [server.get(key) or "" for key in ("username", "credential")]
        if not all(_utf8(t) for t in texts):
            return "offer config.iceServers entry with a string that is not valid Unicode (lone surrogate)"
    channels = message.get("data_channels")
    if channels is not None:
        if not isinstance(channels, list) or not all(
                isinstance(c, dict) and isinstance(c.get("label"), str) for c in channels):
            return "offer data_channels is not a list of objects with a label"
    if "mid" in message and not isinstance(message["mid"], dict):
        return "offer mid is not an object"
    return None


class _Connection:
    """The working part of one connection: signaling, the peer connection and the state machine.

    Threads, timers and engine routers hold this object, never the `SoraConnection` the application holds: so
    that dropping the application's last reference to that one ends the connection (as the official SDK's
    destructor does) instead of the running connection keeping it alive. The callbacks are read from the
    `SoraConnection` through a weak reference while it exists, and from the dict it hands over as it goes.
    """

    def __init__(self, sora, options, owner, *, identity: Dict[str, str]) -> None:
        self._sora = sora  # the Sora instance's _SoraCore
        self._context = sora._context
        self._options = options
        self._identity = identity
        self._owner = weakref.ref(owner)
        self._orphan_callbacks: Dict[str, Callable] = {}  # the owner's callbacks once it was dropped
        self._disconnected = False  # on_disconnect has been (or is being) delivered: no callback after it
        self._state = INIT
        self._state_lock = threading.Lock()
        self._done = threading.Event()
        self._ws = None
        self._peer: Optional[Peer] = None
        self._channels = DataChannels()
        self._dc_active = False
        self._pending_switched: Optional[Tuple[str, dict]] = None  # "switched" that came before our signaling DC
        self._closing_mode: Optional[str] = None
        self._timers: List[threading.Timer] = []
        self._tracks: Dict[str, SoraMediaTrack] = {}
        self._transforms: List = []  # (transformer, engine transform) of the send branches
        self._video_encoder: Optional[str] = None  # encoderImplementation when not the engine default
        self._loopback = all(_is_loopback_host(u) for u in options.signaling_urls)
        self._pending_candidates: List[str] = []
        self._answer_sent = False
        self._close_reason = ""
        self._end: Optional[Tuple[Code, str]] = None  # what on_disconnect said
        self._connection_id: Optional[str] = None
        self._descriptions = (None, None)  # (remote offer, local answer) last negotiated

    # ------------------------------------------------------------------ helpers
    def _emit(self, name: str, *args: Any) -> None:
        if self._disconnected:
            return
        owner = self._owner()
        callbacks = owner._callbacks if owner is not None else self._orphan_callbacks
        invoke_in(callbacks, "SoraConnection", name, *args)

    def _owner_dropped(self) -> None:
        """The application dropped its last reference to the SoraConnection (it handed its callbacks over in
        _orphan_callbacks): end the connection as disconnect() does, without waiting (reaper thread)."""
        if self._started():
            self._post(self._start_disconnect)

    def _started(self) -> bool:
        """False, once ended, for a connection never connected (it ends quietly here) or already ended."""
        with self._state_lock:
            if self._state == INIT:
                self._state = CLOSED
                self._done.set()
            return self._state != CLOSED

    def _post(self, fn) -> None:
        if not self._context.post(fn):
            log.debug("dispatcher closed; dropped work for a connection")

    def _later(self, seconds: float, fn) -> None:
        timer = threading.Timer(seconds, self._post, args=(fn,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _send_ws(self, text: str, report: bool = True) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            ws.send_text(text)
        except (WebSocketError, OSError) as exc:
            log.debug("WebSocket send failed: %s", exc)
            return False
        if report:
            self._emit("on_signaling_message", WS, SENT, text)
        return True

    def _send_dc(self, label: str, text: str) -> bool:
        channel = self._channels.get(label)
        if channel is None or self._peer is None:
            return False
        data = text.encode("utf-8")
        try:
            self._peer.send_data(channel.id, self._channels.encode(label, data), True)
        except SoraError as exc:
            log.debug("data channel send failed: %s", exc)
            return False
        self._channels.count_sent(channel, len(data))
        return True

    # ------------------------------------------------------------------ public API
    @property
    def ice_connection_state(self) -> str:
        """ICE connection state of the peer connection ("new" before the offer, "closed" after disconnect)."""
        if self._state == CLOSED:
            return "closed"
        return self._peer.ice_connection_state if self._peer is not None else "new"

    @property
    def connection_state(self) -> str:
        """Peer connection state ("new" before the offer, "closed" after disconnect)."""
        if self._state == CLOSED:
            return "closed"
        return self._peer.connection_state if self._peer is not None else "new"

    def connect(self) -> None:
        """Start connecting and return at once; the result arrives through the callbacks."""
        with self._state_lock:
            if self._state == CLOSED:
                raise RuntimeError("Already disconnected. Please create a new connection with "
                                   "Sora.create_connection() to connect again.")
            if self._state != INIT:
                log.warning("connect() was called again on a connection that is already %s: ignored", self._state)
                return
            if not self._sora._register(self):
                raise SoraInvalidState("the Sora instance of this connection is closed")
            self._state = CONNECTING
        threading.Thread(target=self._open_thread, name="sora-ws-open", daemon=True).start()

    def disconnect(self) -> None:
        """End the connection; blocks until on_disconnect has run (bounded), except inside a callback."""
        if not self._started():
            return
        if self._context.on_dispatcher_thread():
            self._start_disconnect()
            return
        self._post(self._start_disconnect)
        self.wait_ended()

    def wait_ended(self) -> None:
        """Wait until on_disconnect has run (bounded by the close timeouts); if the dispatcher thread cannot run
        it (a callback blocks it), end the connection from this thread so that on_disconnect still comes once."""
        opts = self._options
        bound = max(opts.websocket_close_timeout, opts.disconnect_wait_timeout) + 5.0
        if self._done.wait(bound):
            return
        self._post(lambda: self._finish(Code.CLOSE_FAILED, "Failed to close: disconnect timed out"))
        if not self._done.wait(5.0):
            log.error("disconnect(): the dispatcher thread did not answer (a callback blocks it); "
                      "ending the connection from this thread")
            self._finish(Code.CLOSE_FAILED, "Failed to close: disconnect timed out")

    def get_stats(self) -> str:
        """W3C webrtc-stats as JSON text ("[]" before the peer connection exists)."""
        if self._state == CLOSED:
            raise SoraInvalidState("get_stats() was called after the connection ended (%s)" % self._end_reason())
        peer = self._peer
        if peer is None:
            return "[]"
        try:
            return json.dumps(self._stats_reports(peer))
        except SoraInvalidState:
            raise SoraInvalidState("get_stats() was called after the connection ended (%s)"
                                   % self._end_reason()) from None

    def _end_reason(self) -> str:
        if self._end is None:
            return "disconnect() before connect()"
        return "%s: %s" % (self._end[0].name, self._end[1])

    def send_data_channel(self, label: str, data: bytes, _what: str = "send_data_channel()") -> bool:
        """Send `data` on the user data channel `label`; False if that channel is not open."""
        if not isinstance(label, str):
            raise TypeError("label must be a str, got %s" % type(label).__name__)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data must be bytes, got %s" % type(data).__name__)
        if self._state == CLOSED:
            raise SoraInvalidState("%s was called after the connection ended (%s)" % (_what, self._end_reason()))
        if len(data) == 0:
            raise SoraInvalidArgument("empty data-channel messages cannot be sent by this engine (GStreamer 1.22)")
        peer = self._peer
        channel = self._channels.get(label)
        if peer is None or channel is None:
            return False
        payload = bytes(data)
        try:
            peer.send_data(channel.id, self._channels.encode(label, payload), True)
        except SoraInvalidState:
            return False
        self._channels.count_sent(channel, len(payload))
        return True

    def buffered_amount(self, label: str) -> int:
        """Bytes queued on data channel `label` and not sent yet (0 when it is not open)."""
        peer = self._peer
        channel = self._channels.get(label)
        if peer is None or channel is None or self._state == CLOSED:
            return 0
        try:
            return peer.buffered_amount(channel.id)
        except SoraError:
            return 0

    def send_rpc(self, id: Optional[int], method: str, params: Any = None) -> bool:
        """Send a JSON-RPC 2.0 request (or a notification when id is None) on the `rpc` data channel."""
        if not isinstance(method, str):
            raise TypeError("method must be a str")
        if id is not None and (isinstance(id, bool) or not isinstance(id, int)):
            raise TypeError("id must be an int or None")
        if params is not None and not isinstance(params, (dict, list)):
            raise TypeError("Failed to SendRpc: params must be an object or an array")
        request: Dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            request["params"] = params
        if id is not None:
            request["id"] = id
        try:
            text = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError):
            raise TypeError("Invalid JSON value in params") from None
        return self.send_data_channel("rpc", text.encode("utf-8"), _what="send_rpc()")

    # ------------------------------------------------------------------ WebSocket threads
    def _ws_kwargs(self, timeout: float) -> Dict[str, Any]:
        opts = self._options
        return {
            "timeout": timeout,
            "user_agent": opts.user_agent or self._identity["user_agent"],
            "ca_cert": opts.ca_cert, "client_cert": opts.client_cert, "client_key": opts.client_key,
            "insecure": bool(opts.insecure), "proxy_url": opts.proxy_url, "proxy_username": opts.proxy_username,
            "proxy_password": opts.proxy_password, "proxy_agent": opts.proxy_agent,
        }

    def _open_thread(self, urls: Optional[List[str]] = None, redirect: bool = False) -> None:
        opts = self._options
        if urls is None:  # as the official SDK: no URL is preferred over another
            urls = random.sample(opts.signaling_urls, len(opts.signaling_urls))
        try:
            ws, url = open_first(urls, **self._ws_kwargs(opts.websocket_connection_timeout))
        except InvalidURLError as exc:
            prefix = "Invalid URL: url=" if redirect else ""
            message = (prefix + (urls or [""])[0]) if redirect else str(exc)
            self._post(lambda: self._finish(Code.INVALID_PARAMETER, message))
            return
        except HandshakeTimeout:
            message = "Connection timeout in redirection" if redirect else "Connection timeout"
            self._post(lambda: self._finish(Code.INTERNAL_ERROR, message))
            return
        except HandshakeError as exc:
            last_ec = getattr(exc, "last_error", None) or str(exc)
            last_url = getattr(exc, "last_url", None) or ""
            what = "Failed Websocket handshake in redirecting" if redirect else "Failed Websocket handshake"
            message = "%s: last_ec=%s last_url=%s" % (what, last_ec, last_url)
            self._post(lambda: self._finish(Code.WEBSOCKET_HANDSHAKE_FAILED, message))
            return
        except Exception as exc:  # unexpected: still end the connection cleanly
            log.exception("WebSocket open failed")
            failure = "WebSocket open failed: %s" % exc  # `exc` is unbound once the handler ends
            self._post(lambda: self._finish(Code.INTERNAL_ERROR, failure))
            return
        self._post(lambda: self._on_ws_open(ws, url, redirect))

    def _reader_thread(self, ws) -> None:
        while True:
            try:
                _is_text, payload = ws.recv()
            except WebSocketClosed as exc:
                code, reason = exc.code, exc.reason
                self._post(lambda: self._on_ws_closed(ws, code, reason))
                return
            except ProtocolError as exc:
                message = str(exc)
                self._post(lambda: self._on_ws_broken(ws, "Invalid WebSocket frame: %s" % message))
                return
            except (WebSocketEOF, WebSocketError, OSError, ValueError) as exc:
                detail = "End of file" if isinstance(exc, WebSocketEOF) else (str(exc) or type(exc).__name__)
                self._post(lambda: self._on_ws_eof(ws, detail))
                return
            self._post(lambda p=payload: self._handle_server_input("a WebSocket message", self._on_ws_message, ws, p))

    def _close_ws_async(self, ws, abort: bool = False) -> None:
        if ws is None:
            return

        def run() -> None:
            try:
                if abort:
                    ws.abort()
                else:
                    ws.close(1000, "", timeout=self._options.websocket_close_timeout)
            except (WebSocketError, OSError):
                pass
            except Exception:
                log.debug("closing a WebSocket failed", exc_info=True)

        threading.Thread(target=run, name="sora-ws-close", daemon=True).start()

    # ------------------------------------------------------------------ dispatcher: WebSocket events
    def _on_ws_open(self, ws, url: str, redirect: bool) -> None:
        if self._state not in (CONNECTING, CONNECTED):
            self._close_ws_async(ws)
            return
        self._ws = ws
        threading.Thread(target=self._reader_thread, args=(ws,), name="sora-ws-read", daemon=True).start()
        text = self._options.connect_message(sora_client=self._identity["sora_client"],
                                             libwebrtc=self._identity["libwebrtc"],
                                             environment=self._identity["environment"], redirect=redirect)
        self._send_ws(text)

    def _handle_server_input(self, what: str, handler, *args) -> None:
        """Run a handler of server input: whatever it cannot handle ends the connection with INTERNAL_ERROR
        (never an exception lost on the dispatcher thread and a connection left waiting)."""
        try:
            handler(*args)
        except Exception as exc:
            log.exception("could not handle %s", what)
            if self._state != CLOSED:
                self._finish(Code.INTERNAL_ERROR, "Failed to handle %s from the signaling server: %s: %s"
                             % (what, type(exc).__name__, exc))

    def _on_ws_message(self, ws, payload: bytes) -> None:
        if ws is not self._ws or self._state == CLOSED:
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._malformed("a message that is not UTF-8")
            return
        try:
            message = json.loads(text)
        except RecursionError:
            self._malformed("a JSON message nested too deeply")
            return
        except ValueError:
            self._malformed("a message that is not JSON: %.80r" % text)
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._malformed("a JSON message without a string \"type\": %.80r" % text)
            return
        kind = message["type"]
        if kind == "offer":
            if self._peer is None and self._state == CONNECTING:
                self._handle_offer(text, message)
            return
        if kind == "redirect":
            self._handle_redirect(text, message)
            return
        if self._peer is None:
            return  # as the official SDK: nothing but offer/redirect is handled before the offer
        if kind in ("re-offer", "update"):
            self._handle_reoffer(WS, text, message)
        elif kind == "notify":
            self._emit("on_notify", text)
        elif kind == "push":
            self._emit("on_push", text)
        elif kind == "ping":
            self._handle_ping(message)
        elif kind == "switched":
            self._handle_switched(text, message)

    def _malformed(self, what: str) -> None:
        self._finish(Code.INTERNAL_ERROR, "Received %s from the signaling server" % what)

    def _on_ws_closed(self, ws, code: int, reason: str) -> None:
        if ws is not self._ws:
            return
        self._ws = None
        if self._state == CLOSED:
            return
        self._emit("on_ws_close", code, reason)
        if self._state == CLOSING and self._closing_mode in ("ws", "ws+dc"):
            if self._closing_mode == "ws":
                self._finish(Code.CLOSE_SUCCEEDED, "Succeeded to close WebSocket (DC signaling is not enabled)")
            else:
                self._finish(Code.CLOSE_SUCCEEDED, "Succeeded to close Websocket (DC signaling is enabled)")
            return
        detail = "ec=%s wscode=%d wsreason=%s" % (GRACEFUL, code, reason)
        if code == 1000:
            what = "WebSocket and DataChannel" if self._dc_active else "WebSocket"
            self._finish(Code.CLOSE_SUCCEEDED, "Succeeded to close %s from server: %s" % (what, detail))
        else:
            self._finish(Code.WEBSOCKET_ONCLOSE, "Failed to read WebSocket: %s" % detail)

    def _on_ws_eof(self, ws, detail: str) -> None:
        if ws is not self._ws:
            return
        self._ws = None
        if self._state == CLOSED:
            return
        self._emit("on_ws_close", 0, "")
        message = "Failed to read WebSocket: ec=%s wscode=0 wsreason=" % detail
        if self._state == CLOSING:
            self._finish(Code.CLOSE_FAILED, "Failed to close WebSocket: ec=%s wscode=0 wsreason=" % detail)
        else:
            self._finish(Code.WEBSOCKET_ONERROR, message)

    def _on_ws_broken(self, ws, message: str) -> None:
        if ws is not self._ws or self._state == CLOSED:
            return
        self._ws = None
        self._emit("on_ws_close", 1002, message)
        self._finish(Code.WEBSOCKET_ONERROR, message)

    # ------------------------------------------------------------------ dispatcher: signaling messages
    def _handle_offer(self, text: str, message: dict) -> None:
        problem = _invalid_offer(message)
        if problem is not None:
            self._malformed("an invalid offer (%s)" % problem)
            return
        self._emit("on_signaling_message", WS, RECEIVED, text)
        self._connection_id = message["connection_id"]
        stun, turn = (None, None) if self._loopback else _ice_servers(message["config"])
        try:
            self._peer = Peer(self._context, on_event=self._on_peer_event, loopback_only=self._loopback,
                              local_address=os.environ.get("SORA_SDK_ICE_ADDRESS") or None, stun_server=stun)
            problem = sdp_parser.direction_problem(message["sdp"])
            if problem is not None:  # webrtcbin 1.26 aborts the process on these
                raise SoraError(problem)
            self._peer.set_remote_description("offer", message["sdp"])
        except SoraError as exc:
            self._fail_internal(Code.ICE_FAILED, "Failed to SetRemoteDescription: %s" % exc)
            return
        sections = sdp_parser.parse(message["sdp"])
        self._announce_tracks(sections)
        if self._state != CONNECTING:
            return  # an on_track callback disconnected (or closed the Sora instance)
        self._channels.apply_offer(message.get("data_channels"))
        try:
            self._attach_sources(sections, message)
        except SoraError as exc:
            self._fail_internal(Code.INTERNAL_ERROR, "Failed to add a local track: %s" % exc)
            return
        with self._state_lock:
            if self._state != CONNECTING:
                return
            self._state = CONNECTED
        self._emit("on_set_offer", text)
        if self._state != CONNECTED:
            return  # a callback disconnected
        try:
            answer = self._peer.create_answer()
            problem = sdp_parser.direction_problem(message["sdp"], answer)
            if problem is not None:  # (RFC 3264; the server's webrtcbin may abort on it)
                raise SoraError(problem)
        except SoraError as exc:
            self._fail_internal(Code.ICE_FAILED, "Failed to CreateAnswer: %s" % exc)
            return
        self._send_ws(json.dumps({"type": "answer", "sdp": answer}, separators=(",", ":")))
        self._descriptions = (message["sdp"], answer)
        self._answer_sent = True
        for candidate in self._pending_candidates:
            self._send_candidate(candidate)
        self._pending_candidates = []

    def _announce_tracks(self, sections) -> None:
        for section in sections:
            if section.kind not in ("audio", "video") or section.direction not in ("sendonly", "sendrecv"):
                continue
            key = section.mid or str(section.index)
            if key in self._tracks or section.msid is None:
                continue
            if section.stream_id == self._connection_id:
                continue  # the server's placeholder for this connection's own media, not a remote track
            track = SoraMediaTrack(section.kind, section.track_id or random_track_id(), section.stream_id or "",
                                   key, _internal=True)
            self._tracks[key] = track
            self._emit("on_track", track)

    def _attach_sources(self, sections, offer: Optional[dict] = None) -> None:
        opts = self._options
        if opts.role not in ("sendonly", "sendrecv"):
            return
        offer = offer or {}
        # Simulcast (signaling §11): the offer's encodings go to the video m-line whose mid is offer.mid.video.
        encodings = offer.get("encodings") if offer.get("simulcast") is True else None
        mids = offer.get("mid") if isinstance(offer.get("mid"), dict) else {}
        simulcast_mid = mids.get("video") if isinstance(encodings, list) and encodings else None
        if opts.video_source is not None:
            # How the video gives way when the send bandwidth estimate is low; unset: libwebrtc's default for
            # camera content (keep the frame rate, lower the resolution).
            preference = opts.degradation_preference
            if preference is None:
                preference = SoraDegradationPreference.MAINTAIN_FRAMERATE
            self._peer.set_degradation_preference(int(preference))
        done = set()
        for section in sections:
            if section.kind in done or section.kind not in ("audio", "video"):
                continue
            source = opts.video_source if section.kind == "video" else opts.audio_source
            if source is None or section.direction not in ("recvonly", "sendrecv"):
                continue
            codecs = section.media_codecs()
            if not codecs:
                continue
            codec = codecs[0]
            simulcast = section.kind == "video" and simulcast_mid is not None and section.mid == simulcast_mid
            transformer = opts.video_frame_transformer if section.kind == "video" else opts.audio_frame_transformer
            if transformer is not None:
                if simulcast:
                    log.warning("video_frame_transformer is not applied to simulcast layers")
                else:
                    engine = transformer._attach(self._context)
                    self._transforms.append((transformer, engine))
                    self._peer.set_send_transform(section.index, engine)
            # (the direction first: webrtcbin 1.26 gives a send pad only to a transceiver that sends)
            self._peer.set_direction(section.index, "sendonly" if section.direction == "recvonly" else "sendrecv")
            if simulcast:
                self._peer.attach_video_simulcast(source._handle, section.index, codec.name.upper(),
                                                  codec.payload_type, encodings, opts.video_bit_rate or 1000,
                                                  codec.fmtp, section.extmaps)
            elif section.kind == "video":
                element = codec_mod.encoder_element_for(self._sora._video_codec_preference, self._sora._openh264,
                                                        codec.name)
                if element is not None:
                    self._peer.set_video_encoder(codec.name.upper(), element)
                    self._video_encoder = stats_mod.implementation_name(element)
                self._peer.attach_video_source(source._handle, section.index, codec.name.upper(),
                                               codec.payload_type, opts.video_bit_rate or 1000, codec.fmtp)
            else:
                self._peer.attach_audio_source(source._handle, section.index, codec.name.upper(),
                                               codec.payload_type, opts.audio_bit_rate or 0, codec.fmtp)
            done.add(section.kind)

    def _handle_reoffer(self, via, text: str, message: dict) -> None:
        self._emit("on_signaling_message", via, RECEIVED, text)
        sdp = message.get("sdp")
        if not isinstance(sdp, str) or "\x00" in sdp:
            self._malformed("a %s without an sdp string (or with a NUL character in it)" % message.get("type"))
            return
        answer_type = "update" if message.get("type") == "update" else "re-answer"
        problem = self._reoffer_problem(sdp)
        if problem is not None:  # libwebrtc refuses these in SetRemoteDescription too
            self._fail_internal(Code.ICE_FAILED, "Failed to apply %s: it %s" % (message.get("type"), problem))
            return
        try:
            self._peer.set_remote_description("offer", sdp)
            self._announce_tracks(sdp_parser.parse(sdp))
            if self._state not in (CONNECTED, CLOSING):
                return  # an on_track callback disconnected
            answer = self._peer.create_answer()
            problem = sdp_parser.direction_problem(sdp, answer)
            if problem is not None:  # (RFC 3264; the server's webrtcbin may abort on it)
                raise SoraError(problem)
        except SoraError as exc:
            self._fail_internal(Code.ICE_FAILED, "Failed to apply %s: %s" % (message.get("type"), exc))
            return
        self._descriptions = (sdp, answer)
        reply = json.dumps({"type": answer_type, "sdp": answer}, separators=(",", ":"))
        if answer_type == "re-answer" and self._dc_active and self._send_dc("signaling", reply):
            self._emit("on_signaling_message", DC, SENT, reply)
        else:
            self._send_ws(reply)

    def _handle_ping(self, message: dict) -> None:
        if message.get("stats") is True:
            reports = self._stats_reports(self._peer)
            if self._dc_active and self._channels.get("stats") is not None:
                self._send_dc("stats", json.dumps({"type": "stats", "reports": reports}, separators=(",", ":")))
                return
            self._send_ws(json.dumps({"type": "pong", "stats": reports}, separators=(",", ":")), report=False)
        else:
            self._send_ws('{"type":"pong"}', report=False)

    def _handle_switched(self, text: str, message: dict) -> None:
        if self._channels.get("signaling") is None:
            # The server saw the channels open before our engine reported its end open: switch (and tell the
            # application) once it does, so that nothing goes to a channel that cannot carry it yet.
            self._pending_switched = (text, message)
            return
        self._pending_switched = None
        self._dc_active = True
        self._emit("on_switched", text)
        if message.get("ignore_disconnect_websocket") is True and self._ws is not None:
            ws, self._ws = self._ws, None
            self._close_ws_async(ws, abort=True)
            self._emit("on_ws_close", 1000, "SELF-CLOSED")

    def _handle_redirect(self, text: str, message: dict) -> None:
        location = message.get("location")
        self._emit("on_signaling_message", WS, RECEIVED, text)
        if not isinstance(location, str) or not location:
            self._finish(Code.INVALID_PARAMETER, "Invalid URL: url=%r" % (location,))
            return
        ws, self._ws = self._ws, None
        self._close_ws_async(ws)
        self._emit("on_ws_close", 1000, "SELF-CLOSED")
        threading.Thread(target=self._open_thread, args=([location], True), name="sora-ws-redirect",
                         daemon=True).start()

    # ------------------------------------------------------------------ dispatcher: engine events
    def _on_peer_event(self, event) -> None:
        if self._state == CLOSED:
            return
        name = event.name
        if name == "ice-candidate":
            if self._answer_sent:
                self._send_candidate(event.str0)
            elif len(self._pending_candidates) < MAX_INLINE_CANDIDATES:
                self._pending_candidates.append(event.str0)
        elif name == "track":
            self._bind_track(event)
        elif name == "connection-state":
            if event.str0 == "failed":
                self._finish(Code.PEER_CONNECTION_STATE_FAILED, "PeerConnectionState::kFailed")
        elif name == "data-channel-open":
            self._channels.opened(event.i0, event.str0)
            if self._channels.listed(event.str0):
                self._emit("on_data_channel", event.str0)
            if event.str0 == "signaling" and self._pending_switched is not None and self._state == CONNECTED:
                self._handle_switched(*self._pending_switched)
        elif name == "data-channel-message":
            self._handle_server_input("a data channel message", self._on_dc_message, event.i0, event.str0,
                                      event.data)
        elif name == "data-channel-close":
            self._channels.closed(event.i0)
            if self._state == CLOSING and self._closing_mode in ("dc", "dc-close") and \
                    self._channels.open_count() == 0:
                if self._closing_mode == "dc":
                    self._finish(Code.CLOSE_SUCCEEDED, "Succeeded to close DataChannel")
                else:
                    self._finish(Code.CLOSE_SUCCEEDED,
                                 "Succeeded to close DataChannel: reason=%s" % self._close_reason)
        elif name == "error":
            log.warning("engine error (%s): %s", event.str1, event.str0)
            if event.i0 > 0 and self._state == CONNECTED:  # a send branch failed: never go on sending nothing
                self._fail_internal(Code.INTERNAL_ERROR, "Failed to send media on m-line %d: %s (%s)"
                                    % (event.i0 - 1, event.str0, event.str1))

    def _bind_track(self, event) -> None:
        """Media arrived for a remote track: match it to the SoraMediaTrack announced from the offer."""
        kind, mid = event.str0, event.str1
        candidates = [t for t in self._tracks.values() if t.kind == kind and not t._bound]
        track = next((t for t in candidates if t._mid == mid), candidates[0] if candidates else None)
        if track is None:
            track = SoraMediaTrack(kind, random_track_id(), "", mid or "", _internal=True)
            self._tracks["engine-%d" % event.i0] = track
            self._emit("on_track", track)
        track._bind(self._context, self._peer, event.i0)

    def _send_candidate(self, candidate: str) -> None:
        text = json.dumps({"type": "candidate", "candidate": candidate}, separators=(",", ":"))
        self._send_ws(text)

    def _on_dc_message(self, channel_id: int, label: str, data: bytes) -> None:
        self._channels.count_received(channel_id, len(data))
        try:
            payload = self._channels.decode(label, data)
        except Exception:
            log.warning("dropped a message on %r that could not be decompressed", label)
            return
        if label.startswith("#"):
            self._emit("on_message", label, payload)
            return
        if label == "rpc":
            self._emit("on_rpc", payload)
            return
        try:
            text = payload.decode("utf-8")
            message = json.loads(text)
        except (ValueError, RecursionError):
            log.warning("dropped a message on %r that is not JSON", label)
            return
        if not isinstance(message, dict):
            log.warning("dropped a JSON message on %r that is not an object", label)
            return
        kind = message.get("type")
        if label == "signaling":
            self._emit("on_signaling_message", DC, RECEIVED, text)
            if kind == "re-offer":
                self._handle_reoffer_dc(text, message)
            elif kind == "close":
                self._handle_dc_close(message)
        elif label == "notify":
            self._emit("on_notify", text)
        elif label == "push":
            self._emit("on_push", text)
        elif label == "stats" and kind == "req-stats":
            reports = self._stats_reports(self._peer)
            self._send_dc("stats", json.dumps({"type": "stats", "reports": reports}, separators=(",", ":")))

    def _reoffer_problem(self, sdp: str) -> Optional[str]:
        """Why a re-offer cannot follow the current session (webrtcbin asserts on some), or None."""
        old = sdp_parser.parse(self._descriptions[0]) if self._descriptions[0] else []
        new = sdp_parser.parse(sdp)
        if len(new) < len(old):
            return "removes m-lines (%d, was %d)" % (len(new), len(old))
        for before, after in zip(old, new):
            if before.mid is not None and after.mid != before.mid:
                return "changes the mid of m-line %d (%r, was %r)" % (before.index, after.mid, before.mid)
        return sdp_parser.direction_problem(sdp)

    def _handle_reoffer_dc(self, text: str, message: dict) -> None:
        sdp = message.get("sdp")
        if not isinstance(sdp, str):
            log.warning("dropped a re-offer without sdp on the signaling data channel")
            return
        if "\x00" in sdp:
            self._malformed("a re-offer with a NUL character in its sdp")
            return
        problem = self._reoffer_problem(sdp)
        if problem is not None:
            self._fail_internal(Code.ICE_FAILED, "Failed to apply re-offer: it %s" % problem)
            return
        try:
            self._peer.set_remote_description("offer", sdp)
            self._announce_tracks(sdp_parser.parse(sdp))
            if self._state not in (CONNECTED, CLOSING):
                return  # an on_track callback disconnected
            answer = self._peer.create_answer()
        except SoraError as exc:
            self._fail_internal(Code.ICE_FAILED, "Failed to apply re-offer: %s" % exc)
            return
        self._descriptions = (sdp, answer)
        reply = json.dumps({"type": "re-answer", "sdp": answer}, separators=(",", ":"))
        if self._send_dc("signaling", reply):
            self._emit("on_signaling_message", DC, SENT, reply)
        else:
            self._send_ws(reply)

    def _handle_dc_close(self, message: dict) -> None:
        code = message.get("code")
        self._close_reason = message.get("reason", "")
        if self._state not in (CONNECTED, CLOSING):
            return
        self._state = CLOSING
        if code != 1000:
            self._finish(Code.CLOSE_SUCCEEDED, "Failed to close DataChannel: code=%s ec=" % code)
            return
        self._closing_mode = "dc-close"
        if self._channels.open_count() == 0:
            self._finish(Code.CLOSE_SUCCEEDED, "Succeeded to close DataChannel: reason=%s" % self._close_reason)
            return
        self._later(self._options.disconnect_wait_timeout, lambda: self._finish(
            Code.CLOSE_FAILED, "Failed to close DataChannel: ec=Operation canceled"))

    # ------------------------------------------------------------------ dispatcher: ending
    def _start_disconnect(self) -> None:
        if self._state in (CLOSING, CLOSED):
            return
        if self._state in (INIT, CONNECTING) or self._peer is None:
            self._finish(Code.CLOSE_SUCCEEDED, "Close was called in connecting")
            return
        self._state = CLOSING
        opts = self._options
        if self._dc_active and self._channels.get("signaling") is not None:
            self._send_dc("signaling", DISCONNECT_MESSAGE)
            self._emit("on_signaling_message", DC, SENT, DISCONNECT_MESSAGE)
            if self._ws is not None:
                self._closing_mode = "ws+dc"
                self._later(opts.disconnect_wait_timeout, self._close_timeout_dc_ws)
            else:
                self._closing_mode = "dc"
                self._later(opts.disconnect_wait_timeout, lambda: self._finish(
                    Code.CLOSE_FAILED, "Failed to close DataChannel: ec=Operation canceled"))
        elif self._ws is not None:
            self._closing_mode = "ws"
            self._send_ws(DISCONNECT_MESSAGE)
            self._later(opts.websocket_close_timeout, self._close_timeout_ws)
        else:
            self._finish(Code.CLOSE_FAILED, "Failed to close DataChannel: ec=Transport endpoint is not connected")

    def _close_timeout_ws(self) -> None:
        if self._state != CLOSING:
            return
        self._emit("on_ws_close", 4999, "DISCONNECT-WAIT-TIMEOUT-ERROR")
        self._finish(Code.CLOSE_FAILED, "Failed to close WebSocket: ec=Operation canceled wscode=0 wsreason=")

    def _close_timeout_dc_ws(self) -> None:
        if self._state != CLOSING:
            return
        self._emit("on_ws_close", 4999, "DISCONNECT-WAIT-TIMEOUT-ERROR")
        self._finish(Code.CLOSE_FAILED, "Failed to close WebSocket (Close timeout): ec=Operation canceled")

    def _fail_internal(self, code: Code, message: str) -> None:
        """An error on our side: tell the server (as the official SDK does) and end."""
        if self._state == CLOSED:
            return
        self._send_ws('{"type":"disconnect","reason":"INTERNAL-ERROR"}')
        self._finish(code, message)

    def _finish(self, code: Code, message: str) -> None:
        """End the connection: exactly one on_disconnect, then everything is released."""
        with self._state_lock:
            if self._state == CLOSED:
                return
            self._state = CLOSED
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        ws, self._ws = self._ws, None
        if ws is not None:
            self._close_ws_async(ws)
        peer = self._peer
        if peer is not None:
            try:
                peer.close()
            except SoraError:
                log.debug("closing the peer failed", exc_info=True)
        tracks = list(self._tracks.values())
        transforms, self._transforms = self._transforms, []
        if tracks or transforms:  # sink and transform threads may be inside a callback: release them off this thread
            def release() -> None:
                for track in tracks:
                    track._end()
                for transformer, engine in transforms:
                    transformer._detach(engine)
            threading.Thread(target=release, name="sora-sink-close", daemon=True).start()
        self._end = (code, message)
        owner = self._owner()
        callbacks = owner._callbacks if owner is not None else self._orphan_callbacks
        if "on_disconnect" in callbacks:
            self._emit("on_disconnect", code, message)
        elif code != Code.CLOSE_SUCCEEDED:  # nobody listens: do not let a failure pass in silence
            log.warning("connection %s ended: %s: %s (set on_disconnect to handle this)",
                        self._connection_id or "(not connected)", code.name, message)
        self._disconnected = True
        self._orphan_callbacks = {}  # what the dropped owner handed over is needed no more
        self._done.set()
        self._sora._unregister(self)

    # ------------------------------------------------------------------ stats
    def _stats_reports(self, peer) -> List[dict]:
        if peer is None:
            return []
        raw = peer.get_stats()
        opts = self._options
        sources = [s._media_source_stats() for s in (opts.audio_source, opts.video_source) if s is not None]
        extra: Dict[str, dict] = {}
        if opts.video_source is not None:
            width, height = opts.video_source._size
            extra["video"] = {"frameWidth": width, "frameHeight": height,
                              "targetBitrate": (opts.video_bit_rate or 1000) * 1000,
                              "qualityLimitationReason": "none"}
            if self._video_encoder is not None:
                extra["video"]["encoderImplementation"] = self._video_encoder
        if opts.audio_source is not None and opts.audio_bit_rate:
            extra["audio"] = {"targetBitrate": opts.audio_bit_rate * 1000}
        return stats_mod.to_w3c(raw, data_channels=self._channels.stats(), media_sources=sources,
                                outbound_extra=extra, ssrcs=sdp_parser.ssrc_table(*self._descriptions))


class SoraConnection:
    """A connection created by `Sora.create_connection()`; see the official API for each callback.

    Dropping the last reference to it ends the connection as `disconnect()` does (without waiting): its
    callbacks, on_disconnect included, still run until then. Reference cycles through callbacks
    (`conn.on_x = self.method`) are collectable.
    """

    on_set_offer = CallbackProperty("on_set_offer")
    on_ws_close = CallbackProperty("on_ws_close")
    on_disconnect = CallbackProperty("on_disconnect")
    on_signaling_message = CallbackProperty("on_signaling_message")
    on_notify = CallbackProperty("on_notify")
    on_push = CallbackProperty("on_push")
    on_message = CallbackProperty("on_message")
    on_rpc = CallbackProperty("on_rpc")
    on_switched = CallbackProperty("on_switched")
    on_track = CallbackProperty("on_track")
    on_data_channel = CallbackProperty("on_data_channel")

    def __new__(cls, *args, **kwargs):
        if not kwargs.get("_internal"):
            raise TypeError("SoraConnection has no public constructor; use Sora.create_connection()")
        return super().__new__(cls)

    def __init__(self, sora, options, *, identity: Dict[str, str], _internal: bool = False) -> None:
        self._callbacks: Dict[str, Callable] = {}
        self._sora = sora  # the Sora object: it lives at least as long as its connections
        self._core = _Connection(sora._core, options, self, identity=identity)

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_core":
            raise AttributeError(name)
        return getattr(self._core, name)  # internals, for tests and the SDK's own tools

    def __del__(self) -> None:
        core = self.__dict__.get("_core")
        if core is not None:
            core._orphan_callbacks = self.__dict__.get("_callbacks", {})  # before the weak reference dies
            later(core._owner_dropped)

    @property
    def ice_connection_state(self) -> str:
        """ICE connection state of the peer connection ("new" before the offer, "closed" after disconnect)."""
        return self._core.ice_connection_state

    @property
    def connection_state(self) -> str:
        """Peer connection state ("new" before the offer, "closed" after disconnect)."""
        return self._core.connection_state

    def connect(self) -> None:
        """Start connecting and return at once; the result arrives through the callbacks."""
        self._core.connect()

    def disconnect(self) -> None:
        """End the connection; blocks until on_disconnect has run (bounded), except inside a callback."""
        self._core.disconnect()

    def close(self) -> None:
        """Disconnect (if needed) and release this connection's engine resources (additive API)."""
        self._core.disconnect()

    def __enter__(self) -> "SoraConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_stats(self) -> str:
        """W3C webrtc-stats as JSON text ("[]" before the peer connection exists)."""
        return self._core.get_stats()

    def send_data_channel(self, label: str, data: bytes) -> bool:
        """Send `data` on the user data channel `label`; False if that channel is not open."""
        return self._core.send_data_channel(label, data)

    def send_rpc(self, id: Optional[int], method: str, params: Any = None) -> bool:
        """Send a JSON-RPC 2.0 request (or a notification when id is None) on the `rpc` data channel."""
        return self._core.send_rpc(id, method, params)
