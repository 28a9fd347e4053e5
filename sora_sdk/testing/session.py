"""One client connection of the local Sora server: its signaling state machine.

The session's own thread (the WebSocket reader) runs everything that may
block: waiting for ``connect``, building the server peer and its offer,
applying the answer and candidates, and the final clean-up. Engine events of
the server peer arrive on the context's dispatcher thread and only do quick
work (DataChannel bookkeeping, relaying, notifies). `terminate()` may be
called from any thread; it sends the close and wakes the session thread,
which then detaches from the channel and frees the peer.

States: ``connecting`` (waiting for connect) -> ``offered`` (offer sent) ->
``joined`` (answer applied, connection.created sent) -> ``closed``.
"""
from __future__ import annotations

import json
import logging
import struct
import threading
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple

from .. import websocket
from ..peer import Peer
from . import filters
from .codec_sdp import OpusParamsError, check_opus_params, offer_codecs
from .auth import AuthError, authenticate
from .channel import new_id, timestamp
from .media import AUDIO_CAPS, VIDEO_CAPS  # noqa: F401  (re-exported)
from .media import bandwidth_offer, checked_offer, own_media_mids, placeholder_answer, placeholder_offer
from .media import receive_caps
from .media import rid_ok as media_rid_ok
from .media import session_encodings, simulcast_caps

log = logging.getLogger("sora_sdk.testing")

ROLES = ("sendonly", "recvonly", "sendrecv")
DC_DIRECTIONS = ("sendonly", "recvonly", "sendrecv")
RELAY_PENDING_MAX = 1000  # `#` messages kept per label for a client whose channel is still opening here

# Close codes of the local server (real Sora's exact codes for these cases are
# not documented; clients treat every code other than 1000 as an error).
CLOSE_BAD_MESSAGE = 4000   # the first message is not a valid connect
CLOSE_AUTH_FAILED = 4001   # authentication / authorization refused
CLOSE_INTERNAL = 4500      # the server could not set up the connection

# DataChannels the server opens for DataChannel signaling, with their direction
# as Sora announces them.
STANDARD_CHANNELS = (
    ("signaling", "sendrecv"),
    ("notify", "sendonly"),
    ("push", "sendonly"),
    ("stats", "sendrecv"),
)


class Reject(Exception):
    def __init__(self, code: int, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.code = code
        self.reason = reason


def encode_json(message: Any) -> str:
    """Compact JSON text; raises ValueError for anything that is not valid JSON/UTF-8."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")  # lone surrogates would make malformed UTF-8
    return text


def _no_constants(name: str):
    raise ValueError("%s is not JSON" % name)


def decode_json(data: bytes) -> Any:
    """Strict JSON from UTF-8 bytes (NaN/Infinity refused); ValueError otherwise."""
    return json.loads(data.decode("utf-8"), parse_constant=_no_constants)


def parse_mids(sdp: str) -> Dict[str, str]:
    """The first a=mid of each audio/video m-line in `sdp`."""
    mids: Dict[str, str] = {}
    kind = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        elif line.startswith("a=mid:") and kind in ("audio", "video") and kind not in mids:
            mids[kind] = line[6:].strip()
    return mids


class Session:
    def __init__(self, server, ws: "websocket.ServerWebSocket") -> None:
        self.server = server
        self.ws = ws
        self.connection_id = new_id()
        self.channel_id: Optional[str] = None
        self.session_id: Optional[str] = None
        self.role: Optional[str] = None
        self.client_id: Optional[str] = None
        self.bundle_id: Optional[str] = None
        self.audio = False
        self.video = False
        self.audio_codec_type: Optional[str] = None
        self.video_codec_type: Optional[str] = None
        self.video_bit_rate = None
        self.audio_bit_rate = None
        self.opus_params: Optional[Dict[str, Any]] = None  # audio.opus_params (codec_sdp.py)
        self.simulcast = False
        # Simulcast / spotlight (see media.py): the receiver's choices, and what a sending
        # connection's offer asks of it ("encodings": the auth override or media.default_encodings).
        self.simulcast_rid: Optional[str] = None
        self.simulcast_request_rid: Optional[str] = None  # "none"/"r0"/... (wins over simulcast_rid)
        self.simulcast_encodings: Optional[List[Dict[str, Any]]] = None
        self.encodings: Optional[List[Dict[str, Any]]] = None
        self.spotlight = False
        self.spotlight_number: Optional[int] = None
        self.spotlight_focus_rid: Optional[str] = None
        self.spotlight_unfocus_rid: Optional[str] = None
        self.notify_metadata = None
        self.authn_metadata = None
        self.authz_metadata = None
        self.data_channel_signaling = False
        self.ignore_disconnect_websocket = False
        self.connection_lifetime = None
        self.connect_message: Optional[Dict[str, Any]] = None
        self.user_channels: Dict[str, Dict[str, Any]] = {}  # "#label" -> the client's spec
        self.answer_sdp: Optional[str] = None  # the client's answer (its msid / SSRC lines)
        self.compress: Dict[str, bool] = {}  # every server DataChannel label -> compress
        self.mids: Dict[str, str] = {}
        # a=mid of a recvonly connection's own placeholder m-lines: sendonly, with
        # the connection's own id as msid in the offer text (see media.mark_own_placeholders).
        self.placeholder_mids: Tuple[str, ...] = ()
        self.local_offer: Optional[str] = None  # the last offer the server peer set (media.checked_offer)
        self.rejected_mids: Tuple[str, ...] = ()  # m-lines the client's last answer rejected (port 0)
        self.state = "connecting"
        self.created_timestamp = timestamp()
        self.last_pong: Optional[float] = None
        self.client_stats = None
        self._started = time.monotonic()
        self._lock = threading.RLock()
        self._dc_cond = threading.Condition(self._lock)
        self._peer: Optional[Peer] = None
        self._dc_ids: Dict[str, int] = {}
        self._dc_open: set = set()
        # `#` messages relayed to this client before its channel finished opening on our side (the client may see
        # its end open, and another client send, before the acknowledgement reaches us): sent in order on open
        self._relay_pending: Dict[str, list] = {}
        self._relay_ready: set = set()  # `#` labels open here with nothing left pending
        self._switched = False
        self._ws_open = True
        self._attached = False
        self._ending = False
        self._end_code = 1000
        self._end_reason = ""
        self._ended = threading.Event()
        self._timers: List[Any] = []
        self._early_candidates: List[Any] = []
        # Peer calls from threads other than the session thread hold this, so
        # the session thread never frees the peer under them.
        self._peer_lock = threading.Lock()

    # ------------------------------------------------------------------ info
    def minutes(self) -> int:
        return int((time.monotonic() - self._started) // 60)

    def info(self) -> Dict[str, Any]:
        peer = self._peer
        out: Dict[str, Any] = {
            "channel_id": self.channel_id,
            "session_id": self.session_id,
            "connection_id": self.connection_id,
            "client_id": self.client_id,
            "bundle_id": self.bundle_id,
            "role": self.role,
            "audio": self.audio,
            "video": self.video,
            "audio_codec_type": self.audio_codec_type,
            "video_codec_type": self.video_codec_type,
            "video_bit_rate": self.video_bit_rate,
            "simulcast": self.simulcast,
            "simulcast_rid": self.simulcast_rid,
            "simulcast_request_rid": self.simulcast_request_rid,
            "spotlight": self.spotlight,
            "data_channel_signaling": self.data_channel_signaling,
            "ignore_disconnect_websocket": self.ignore_disconnect_websocket,
            "data_channels": [dict(spec) for spec in self.user_channels.values()],
            "switched": self._switched,
            "websocket": self._ws_open,
            "state": self.state,
            "created_timestamp": self.created_timestamp,
            "ice_connection_state": peer.ice_connection_state if peer is not None else "new",
            "connection_state": peer.connection_state if peer is not None else "new",
        }
        if self.notify_metadata is not None:
            out["metadata"] = self.notify_metadata
        if self.authn_metadata is not None:
            out["authn_metadata"] = self.authn_metadata
        if self.authz_metadata is not None:
            out["authz_metadata"] = self.authz_metadata
        return out

    @property
    def switched(self) -> bool:
        return self._switched

    def _peer_call(self, what: str, fn, default=None):
        """Run fn(peer) from any thread unless the peer is gone; errors are logged."""
        with self._peer_lock:
            peer = self._peer
            if peer is None or peer.closed:
                return default
            try:
                return fn(peer)
            except Exception as exc:
                log.debug("session %s: %s failed: %s", self.connection_id, what, exc)
                return default

    def stats(self) -> List[Dict[str, Any]]:
        return self._peer_call("get stats", lambda peer: peer.get_stats(), [])

    def request_key_frame(self) -> None:
        self._peer_call("key frame request", lambda peer: peer.request_key_frame())

    # ------------------------------------------------------------------ main
    def run(self) -> None:
        """The session thread: from the upgraded WebSocket to the end of the connection."""
        try:
            self._serve()
        except Exception:
            log.exception("local Sora: session %s failed", self.connection_id)
            self.terminate(CLOSE_INTERNAL, "INTERNAL-ERROR")
        finally:
            self._finish()

    def _serve(self) -> None:
        connect = self._receive_connect()
        if connect is None:
            return
        location = self.server.redirect_to
        if location and connect.get("redirect") is not True:
            self._send_ws({"type": "redirect", "location": location})
            self._ending = True
            self.ws.close(1000, "", timeout=3.0)
            return
        try:
            self._accept_connect(connect)
        except Reject as rej:
            log.info("local Sora: connect rejected: %s (%s)", rej.reason, rej)
            self.terminate(rej.code, rej.reason)
            self._read_until_closed()
            return
        self._attached = True
        channel = self.server.registry.attach(self)
        self.session_id = channel.session_id
        if self._ending:
            self._read_until_closed()
            return
        offer = self._build_offer()
        if offer is None or self._ending:
            self._read_until_closed()
            return
        with self._lock:
            if self._ending:
                return
            self.state = "offered"
        self._send_ws(offer)
        if self.connection_lifetime:
            self._later(float(self.connection_lifetime), self._lifetime_expired)
        if self.server.ping_interval:
            self._later(self.server.ping_interval, self._ping)
        self._read_loop()
        if self._ending:
            return
        if self._switched and self.ignore_disconnect_websocket:
            # The client dropped its WebSocket on purpose: the connection lives
            # on over the DataChannels until one side ends it.
            self._ended.wait()
        else:
            self.terminate(1000, "WEBSOCKET-CLOSED", initiator="client")

    # ------------------------------------------------------------- WebSocket
    def _receive_connect(self) -> Optional[Dict[str, Any]]:
        try:
            is_text, payload = self.ws.recv(timeout=self.server.connect_timeout)
        except TimeoutError:
            self.terminate(CLOSE_BAD_MESSAGE, "CONNECT-TIMEOUT")
            self._read_until_closed()
            return None
        except websocket.WebSocketError:
            self._ws_open = False
            return None
        try:
            message = decode_json(payload)
        except (UnicodeDecodeError, ValueError):
            self.terminate(CLOSE_BAD_MESSAGE, "INVALID-JSON")
            self._read_until_closed()
            return None
        if not isinstance(message, dict) or "type" not in message:
            self.terminate(CLOSE_BAD_MESSAGE, "MISSING-TYPE")
            self._read_until_closed()
            return None
        if message.get("type") != "connect":
            self.terminate(CLOSE_BAD_MESSAGE, "UNEXPECTED-TYPE")
            self._read_until_closed()
            return None
        return message

    def _read_until_closed(self) -> None:
        """After our close frame: read until the client's close (or the forced abort)."""
        while True:
            try:
                self.ws.recv()
            except websocket.WebSocketError:
                break
        with self._lock:
            self._ws_open = False

    def _read_loop(self) -> None:
        while True:
            try:
                is_text, payload = self.ws.recv()
            except websocket.WebSocketClosed as closed:
                log.debug("session %s: WebSocket closed by the client: %d %s",
                          self.connection_id, closed.code, closed.reason)
                break
            except websocket.WebSocketError as exc:
                log.debug("session %s: WebSocket ended: %s", self.connection_id, exc)
                break
            try:
                message = decode_json(payload)
            except (UnicodeDecodeError, ValueError):
                log.warning("session %s: ignoring a non-JSON message", self.connection_id)
                continue
            if not isinstance(message, dict):
                log.warning("session %s: ignoring a non-object message", self.connection_id)
                continue
            try:
                self._on_ws_message(message)
            except Exception:
                log.exception("session %s: error handling %r", self.connection_id, message.get("type"))
        with self._lock:
            self._ws_open = False

    def _on_ws_message(self, message: Dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "answer":
            self._on_answer(message)
        elif kind == "candidate":
            self._on_candidate(message)
        elif kind in ("re-answer", "update"):
            self._on_re_answer(message)
        elif kind == "pong":
            self._on_pong(message)
        elif kind == "disconnect":
            self.terminate(1000, "TYPE-DISCONNECT", initiator="client")
        elif kind == "stats":
            self.client_stats = message.get("reports")
        else:
            log.debug("session %s: ignoring %r", self.connection_id, kind)

    def _send_ws(self, message: Dict[str, Any]) -> bool:
        try:
            text = encode_json(message)
        except ValueError as exc:
            log.warning("session %s: not sending invalid JSON: %s", self.connection_id, exc)
            return False
        with self._lock:
            if not self._ws_open:
                return False
        try:
            self.ws.send_text(text)
            return True
        except (websocket.WebSocketError, TimeoutError, OSError) as exc:
            log.debug("session %s: send failed: %s", self.connection_id, exc)
            return False

    # ------------------------------------------------------------- connect
    def _accept_connect(self, msg: Dict[str, Any]) -> None:
        self.connect_message = msg
        role = msg.get("role")
        if role not in ROLES:
            raise Reject(CLOSE_BAD_MESSAGE, "INVALID-ROLE")
        channel_id = msg.get("channel_id")
        if not isinstance(channel_id, str) or not channel_id or len(channel_id) > 255:
            raise Reject(CLOSE_BAD_MESSAGE, "INVALID-CHANNEL-ID")
        self.role = role
        self.channel_id = channel_id
        for key in ("client_id", "bundle_id"):
            value = msg.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > 255):
                raise Reject(CLOSE_BAD_MESSAGE, "INVALID-%s" % key.upper().replace("_", "-"))
        self.client_id = msg.get("client_id") or self.connection_id
        self.bundle_id = msg.get("bundle_id") or self.connection_id

        video = msg.get("video", True)
        audio = msg.get("audio", True)
        if not isinstance(video, (bool, dict)):
            raise Reject(CLOSE_BAD_MESSAGE, "INVALID-VIDEO")
        if not isinstance(audio, (bool, dict)):
            raise Reject(CLOSE_BAD_MESSAGE, "INVALID-AUDIO")
        self.video = video is not False
        self.audio = audio is not False
        video_codec = self.server.video_codec_type
        audio_codec = "OPUS"
        if isinstance(video, dict):
            if video.get("codec_type") is not None:
                video_codec = video.get("codec_type")
            self.video_bit_rate = video.get("bit_rate")
        if isinstance(audio, dict):
            if audio.get("codec_type") is not None:
                audio_codec = audio.get("codec_type")
            self.audio_bit_rate = audio.get("bit_rate")
            try:
                self.opus_params = check_opus_params(audio.get("opus_params"))
            except OpusParamsError as exc:
                raise Reject(CLOSE_BAD_MESSAGE, "INVALID-AUDIO-OPUS-PARAMS", str(exc))
        self.simulcast = msg.get("simulcast") is True
        try:
            self.forwarding_filters = filters.from_connect(msg)
        except filters.FilterError as exc:
            raise Reject(CLOSE_BAD_MESSAGE, "INVALID-FORWARDING-FILTER", str(exc))
        self._accept_simulcast_options(msg)
        self.data_channel_signaling = msg.get("data_channel_signaling") is True
        self.ignore_disconnect_websocket = msg.get("ignore_disconnect_websocket") is True
        self.notify_metadata = msg.get("signaling_notify_metadata")
        self.authn_metadata = msg.get("metadata")

        channels = msg.get("data_channels")
        if channels is not None and self.data_channel_signaling:
            if not isinstance(channels, list):
                raise Reject(CLOSE_BAD_MESSAGE, "INVALID-DATA-CHANNELS")
            for spec in channels:
                if not isinstance(spec, dict):
                    raise Reject(CLOSE_BAD_MESSAGE, "INVALID-DATA-CHANNELS")
                label = spec.get("label")
                if not isinstance(label, str) or not label.startswith("#") or len(label) > 255 \
                        or label in self.user_channels:
                    raise Reject(CLOSE_BAD_MESSAGE, "INVALID-DATA-CHANNEL-LABEL")
                if spec.get("direction") not in DC_DIRECTIONS:
                    raise Reject(CLOSE_BAD_MESSAGE, "INVALID-DATA-CHANNEL-DIRECTION")
                for key in ("max_packet_life_time", "max_retransmits"):
                    value = spec.get(key)
                    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                              or value < 0 or value > 65535):
                        raise Reject(CLOSE_BAD_MESSAGE, "INVALID-DATA-CHANNELS")
                if spec.get("protocol") is not None and not isinstance(spec.get("protocol"), str):
                    raise Reject(CLOSE_BAD_MESSAGE, "INVALID-DATA-CHANNELS")
                self.user_channels[label] = dict(spec)

        try:
            result = authenticate(msg, secret=self.server.secret, signaling_key=self.server.signaling_key,
                                  auth_hook=self.server.auth_hook)
        except AuthError as exc:
            raise Reject(CLOSE_AUTH_FAILED, exc.reason[:120], exc.detail)
        overrides = result["overrides"]
        hook = result["hook"]
        if isinstance(hook, dict):
            if "authz_metadata" in hook:
                self.authz_metadata = hook["authz_metadata"]
            elif "metadata" in hook:
                self.authz_metadata = hook["metadata"]
        if "audio" in overrides:
            self.audio = overrides["audio"]
        if "video" in overrides:
            self.video = overrides["video"]
        if "video_codec_type" in overrides:
            video_codec = overrides["video_codec_type"]
        if "video_bit_rate" in overrides:
            self.video_bit_rate = overrides["video_bit_rate"]
        if "simulcast" in overrides:
            self.simulcast = overrides["simulcast"]
        if "simulcast_encodings" in overrides:
            self.simulcast_encodings = overrides["simulcast_encodings"]
        if self.spotlight:
            self.simulcast = True  # spotlight forwards simulcast layers (focused / unfocused rid)
        if "connection_lifetime" in overrides:
            self.connection_lifetime = overrides["connection_lifetime"]

        if not isinstance(video_codec, str) or video_codec.upper() not in VIDEO_CAPS:
            raise Reject(CLOSE_BAD_MESSAGE, "INVALID-VIDEO-CODEC-TYPE")
        if not isinstance(audio_codec, str) or audio_codec.upper() not in AUDIO_CAPS:
            raise Reject(CLOSE_BAD_MESSAGE, "INVALID-AUDIO-CODEC-TYPE")
        if not self.audio and not self.video and not self.data_channel_signaling:
            raise Reject(CLOSE_BAD_MESSAGE, "INVALID-AUDIO-VIDEO")  # nothing to negotiate
        self.video_codec_type = video_codec.upper() if self.video else None
        self.audio_codec_type = audio_codec.upper() if self.audio else None

    def _accept_simulcast_options(self, msg: Dict[str, Any]) -> None:
        """simulcast_rid, simulcast_request_rid and the spotlight keys of a connect (signaling.md §3, media.py);
        bad values are refused."""
        rid = msg.get("simulcast_rid")
        if rid is not None:
            if not media_rid_ok(rid):
                raise Reject(CLOSE_BAD_MESSAGE, "INVALID-SIMULCAST-RID")
            self.simulcast_rid = rid
        rid = msg.get("simulcast_request_rid")
        if rid is not None:
            if rid != "none" and not media_rid_ok(rid):
                raise Reject(CLOSE_BAD_MESSAGE, "INVALID-SIMULCAST-REQUEST-RID")
            self.simulcast_request_rid = rid
        self.spotlight = msg.get("spotlight") is True
        number = msg.get("spotlight_number")
        if number is not None:
            if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 8:
                raise Reject(CLOSE_BAD_MESSAGE, "INVALID-SPOTLIGHT-NUMBER")
            self.spotlight_number = number
        for key in ("spotlight_focus_rid", "spotlight_unfocus_rid"):
            value = msg.get(key)
            if value is not None:
                if value != "none" and not media_rid_ok(value):
                    raise Reject(CLOSE_BAD_MESSAGE, "INVALID-%s" % key.upper().replace("_", "-"))
                setattr(self, key, value)

    # ------------------------------------------------------------- offer
    def _data_channel_specs(self) -> List[Dict[str, Any]]:
        specs: List[Dict[str, Any]] = []
        for label, direction in STANDARD_CHANNELS:
            specs.append({"label": label, "direction": direction,
                          "compress": label in self.server.compress_labels})
        for label, spec in self.user_channels.items():
            entry: Dict[str, Any] = {"label": label, "direction": spec["direction"],
                                     "compress": spec.get("compress") is True}
            for key in ("ordered", "max_packet_life_time", "max_retransmits", "protocol", "header"):
                if spec.get(key) is not None:
                    entry[key] = spec[key]
            specs.append(entry)
        return specs

    def _build_offer(self) -> Optional[Dict[str, Any]]:
        server = self.server
        kwargs: Dict[str, Any] = {"loopback_only": server.ice_address is None}
        if server.ice_address is not None:
            kwargs["local_address"] = server.ice_address
        try:
            peer = Peer(server.context, on_event=self._on_peer_event, **kwargs)
        except Exception as exc:
            log.error("session %s: cannot create the server peer: %s", self.connection_id, exc)
            self.terminate(CLOSE_INTERNAL, "INTERNAL-ERROR")
            return None
        with self._lock:
            self._peer = peer
            if self._ending:
                return None
        # The server side of the client's media: it receives what a sending
        # client sends; a receiving client gets m-lines of its own
        # (placeholders), then one sendonly m-line per track of each sender
        # already in the channel (media.MediaRouter forwards on those).
        # The placeholders are sendonly on the server peer (with every media
        # m-line inactive, webrtcbin never completes DTLS) but inactive in the
        # offer text: never a sendonly m-line without a=msid, libwebrtc then
        # fires OnTrack with no stream id and the official SDK
        # (stream_ids()[0]) aborts. The answer is applied with them recvonly.
        direction = "recvonly" if self.role in ("sendonly", "sendrecv") else "sendonly"
        dc_specs = self._data_channel_specs() if self.data_channel_signaling else []
        channel = server.registry.channel(self.channel_id)
        try:
            own = 0
            sending = direction == "recvonly"
            if self.audio:
                caps = AUDIO_CAPS[self.audio_codec_type]
                peer.add_transceiver("audio", direction, receive_caps(caps) if sending else caps)
                own += 1
            if self.video:
                caps = VIDEO_CAPS[self.video_codec_type]
                if sending:
                    caps = receive_caps(caps)  # congestion feedback to the sender (TWCC)
                if direction == "recvonly" and self.simulcast:
                    # A simulcast sender: the video m-line receives one stream per rid (signaling.md §11).
                    self.encodings = session_encodings(self)
                    caps = simulcast_caps(caps, self.encodings)
                peer.add_transceiver("video", direction, caps)
                own += 1
            if channel is not None:
                channel.media.offer_slots(self, peer, own)
            for spec in dc_specs:
                channel_id = peer.create_data_channel(
                    spec["label"], ordered=spec.get("ordered"),
                    max_packet_life_time=spec.get("max_packet_life_time"),
                    max_retransmits=spec.get("max_retransmits"), protocol=spec.get("protocol"))
                with self._lock:
                    self._dc_ids[spec["label"]] = channel_id
                    self.compress[spec["label"]] = spec["compress"]
            peer.create_offer()
            if not peer.wait_gathering_complete(server.ice_gathering_timeout):
                log.warning("session %s: ICE gathering did not complete in %.1f s",
                            self.connection_id, server.ice_gathering_timeout)
            sdp = checked_offer(self, peer.local_description())
            if direction == "sendonly":
                self.placeholder_mids = own_media_mids(sdp, own)
            if channel is not None:
                sdp = channel.media.decorate_offer(self, sdp)
            sdp = offer_codecs(self, bandwidth_offer(self, placeholder_offer(self, sdp)))
        except Exception as exc:
            log.error("session %s: cannot build the offer: %s", self.connection_id, exc)
            self.terminate(CLOSE_INTERNAL, "INTERNAL-ERROR")
            return None
        self.mids = parse_mids(sdp)
        offer: Dict[str, Any] = {
            "type": "offer",
            "sdp": sdp,
            "client_id": self.client_id,
            "bundle_id": self.bundle_id,
            "connection_id": self.connection_id,
            "channel_id": self.channel_id,
            "session_id": self.session_id,
            "config": {"iceServers": [], "iceTransportPolicy": "all"},
            "audio": self.audio,
            "video": self.video,
            "simulcast": self.simulcast,
            "data_channel_signaling": self.data_channel_signaling,
            "ignore_disconnect_websocket": self.ignore_disconnect_websocket,
        }
        if self.spotlight:
            offer["spotlight"] = True
        if self.encodings:
            offer["encodings"] = [dict(e) for e in self.encodings]
        if self.mids:
            offer["mid"] = dict(self.mids)
        if dc_specs:
            offer["data_channels"] = dc_specs
        if self.authz_metadata is not None:
            offer["metadata"] = self.authz_metadata
        return offer

    # ------------------------------------------------------------- answer etc.
    def _on_answer(self, message: Dict[str, Any]) -> None:
        sdp = message.get("sdp")
        with self._lock:
            if self.state != "offered" or self._ending:
                log.debug("session %s: ignoring an answer in state %s", self.connection_id, self.state)
                return
            peer = self._peer
        if not isinstance(sdp, str) or peer is None:
            self.terminate(CLOSE_BAD_MESSAGE, "INVALID-ANSWER")
            return
        try:
            peer.set_remote_description("answer", placeholder_answer(self, sdp))
        except Exception as exc:
            log.warning("session %s: answer rejected: %s", self.connection_id, exc)
            self.terminate(CLOSE_BAD_MESSAGE, "INVALID-ANSWER")
            return
        with self._lock:
            if self._ending:
                return
            self.answer_sdp = sdp
            self.state = "joined"
            early, self._early_candidates = self._early_candidates, []
        for mline, candidate in early:
            self._add_candidate(peer, mline, candidate)
        self.server.registry.join(self)
        self._maybe_switch()

    def _on_candidate(self, message: Dict[str, Any]) -> None:
        candidate = message.get("candidate")
        peer = self._peer
        if not isinstance(candidate, str) or peer is None or peer.closed:
            return
        candidate = candidate.strip()
        if not candidate:
            return  # end of candidates
        mline = message.get("sdpMLineIndex")
        if not isinstance(mline, int) or isinstance(mline, bool) or mline < 0:
            mline = 0  # Sora clients send bare candidates: everything is BUNDLEd on m-line 0
        with self._lock:
            if self.state == "offered":
                # Before the answer: keep it until the remote description is set.
                self._early_candidates.append((mline, candidate))
                return
        self._add_candidate(peer, mline, candidate)

    def _add_candidate(self, peer: Peer, mline: int, candidate: str) -> None:
        try:
            peer.add_ice_candidate(mline, candidate)
        except Exception as exc:
            log.debug("session %s: candidate %r refused: %s", self.connection_id, candidate, exc)

    def _on_re_answer(self, message: Dict[str, Any]) -> None:
        sdp = message.get("sdp")
        if not isinstance(sdp, str):
            return
        channel = self.server.registry.channel(self.channel_id) if self._attached else None
        if channel is not None:
            # In order with the channel's other media work (see media.MediaRouter).
            channel.media.re_answer(self, sdp)
        else:
            applied = self.applicable_answer(sdp)
            if applied is not None:
                self._peer_call("re-answer", lambda peer: peer.set_remote_description("answer", applied))

    def applicable_answer(self, sdp: str) -> Optional[str]:
        """The (re-)answer `sdp` as applied to the server peer (media.placeholder_answer), or None once the session
        is ended (INVALID-ANSWER) because an m-line's direction is not one the offer allows."""
        try:
            return placeholder_answer(self, sdp)
        except ValueError as exc:
            log.warning("session %s: answer refused: %s", self.connection_id, exc)
            self.terminate(CLOSE_BAD_MESSAGE, "INVALID-ANSWER")
            return None

    def _on_pong(self, message: Dict[str, Any]) -> None:
        self.last_pong = time.monotonic()
        if "stats" in message:
            self.client_stats = message.get("stats")

    # ------------------------------------------------------------- outgoing
    def send_notify(self, message: Dict[str, Any]) -> bool:
        return self._send_signaling("notify", message)

    def send_push(self, data: Any) -> bool:
        return self._send_signaling("push", {"type": "push", "data": data})

    def _send_signaling(self, label: str, message: Dict[str, Any]) -> bool:
        """A signaling message: on the `label` DataChannel once switched, else on the WebSocket."""
        with self._lock:
            if self._ending and label != "signaling":
                return False
            use_dc = self._switched and label in self._dc_open
            channel_id = self._dc_ids.get(label)
        try:
            text = encode_json(message)
        except ValueError as exc:
            log.warning("session %s: not sending invalid JSON: %s", self.connection_id, exc)
            return False
        if use_dc:
            payload = text.encode("utf-8")
            if self.compress.get(label):
                payload = zlib.compress(payload)
            return self._peer_call("send on " + label,
                                   lambda peer: peer.send_data(channel_id, payload, True) or True, False)
        return self._send_ws(message)

    def deliver_user_message(self, label: str, payload: bytes, sender_id: str) -> bool:
        """Send a relayed `#label` message to this client (sender header and compression per its spec)."""
        spec = self.user_channels.get(label)
        if spec is None:
            return False
        header = spec.get("header")
        if isinstance(header, list) and any(isinstance(h, dict) and h.get("type") == "sender_connection_id"
                                            for h in header):
            payload = sender_id.encode("ascii") + payload
        if spec.get("compress") is True:
            payload = zlib.compress(payload)
        with self._lock:
            if self._ending or label not in self._dc_ids:
                return False
            if label not in self._relay_ready:
                pending = self._relay_pending.setdefault(label, [])
                if len(pending) >= RELAY_PENDING_MAX:
                    return False
                pending.append(payload)
                return True
            channel_id = self._dc_ids[label]
        return self._peer_call("relay on " + label,
                               lambda peer: peer.send_data(channel_id, payload, True) or True, False)

    def _flush_relay(self, label: str, channel_id: int) -> None:
        """Send what was relayed to `label` before it opened here, in order, then let later messages go straight."""
        while True:
            with self._lock:
                pending = self._relay_pending.pop(label, [])
                if not pending:
                    if label in self._dc_open and not self._ending:
                        self._relay_ready.add(label)
                    return
            for payload in pending:
                self._peer_call("relay on " + label,
                                lambda peer, payload=payload: peer.send_data(channel_id, payload, True) or True, False)

    # ------------------------------------------------------------- engine events
    def _on_peer_event(self, event) -> None:
        name = event.name
        if name == "data-channel-open":
            self._on_dc_open(event)
        elif name == "data-channel-message":
            self._on_dc_message(event.str0, event.data, event.i1)
        elif name == "data-channel-close":
            self._on_dc_close(event)
        elif name == "connection-state":
            if event.str0 in ("failed", "closed"):
                self.terminate(1000, "PEER-CONNECTION-%s" % event.str0.upper(), initiator="peer")
        elif name == "track":
            channel = self.server.registry.channel(self.channel_id)
            if channel is not None:
                channel.media.track_added(self, event)
        elif name == "rtp-packet":
            channel = self.server.registry.channel(self.channel_id)
            if channel is not None:
                channel.media.rtp_packet(self, event)
        elif name == "error":
            with self._lock:
                ending = self._ending
            # (once the connection ends, the client's transport goes first: the SCTP encoder's failed writes
            # are the normal end, not a warning)
            (log.debug if ending else log.warning)("session %s: engine error: %s (%s)", self.connection_id,
                                                    event.str0, event.str1)

    def _on_dc_open(self, event) -> None:
        label = event.str0
        with self._lock:
            if event.i1 or label not in self._dc_ids:
                return  # only the server's own channels matter (clients open none)
            self._dc_ids[label] = event.i0
            self._dc_open.add(label)
            self._dc_cond.notify_all()
        if label.startswith("#"):
            self._flush_relay(label, event.i0)
        self._maybe_switch()

    def _on_dc_close(self, event) -> None:
        label = event.str0
        with self._lock:
            if self._dc_ids.get(label) != event.i0:
                return
            self._dc_open.discard(label)
            self._relay_ready.discard(label)
            self._relay_pending.pop(label, None)
            self._dc_cond.notify_all()
            lost_signaling = label == "signaling" and self._switched and not self._ending
        if lost_signaling:
            self.terminate(1000, "DATA-CHANNEL-CLOSED", initiator="client")

    def _on_dc_message(self, label: Optional[str], data: bytes, binary: int) -> None:
        if label is None:
            return
        with self._lock:
            known = label in self._dc_ids
        if not known:
            return
        if self.compress.get(label):
            try:
                data = zlib.decompress(data)
            except zlib.error as exc:
                log.warning("session %s: bad compressed message on %s: %s", self.connection_id, label, exc)
                return
        if label.startswith("#"):
            self.server.registry.relay(self, label, data)
            return
        if label not in ("signaling", "stats"):
            return
        try:
            message = decode_json(data)
        except (UnicodeDecodeError, ValueError):
            log.warning("session %s: non-JSON message on %s", self.connection_id, label)
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "disconnect":
            self.terminate(1000, "TYPE-DISCONNECT", initiator="client")
        elif kind in ("re-answer", "update"):
            # Applying a description blocks: not on the dispatcher thread.
            self._later(0.0, lambda: self._on_re_answer(message))
        elif kind == "stats":
            self.client_stats = message.get("reports")

    def _maybe_switch(self) -> None:
        with self._lock:
            if self._switched or not self.data_channel_signaling or self._ending or self.state != "joined":
                return
            if not self._dc_ids or any(label not in self._dc_open for label in self._dc_ids):
                return
            self._switched = True
        self._send_ws({"type": "switched", "ignore_disconnect_websocket": self.ignore_disconnect_websocket})

    # ------------------------------------------------------------- timers
    def _later(self, delay: float, fn) -> None:
        scheduler = self.server.scheduler
        if scheduler is None:
            return
        handle = scheduler.call_later(delay, fn)
        with self._lock:
            self._timers.append(handle)

    def _lifetime_expired(self) -> None:
        self.terminate(1000, "LIFETIME-EXPIRED")

    def _ping(self) -> None:
        with self._lock:
            if self._ending or not self._ws_open:
                return
        self._send_ws({"type": "ping", "stats": bool(self.server.ping_stats)})
        self._later(self.server.ping_interval, self._ping)

    # ------------------------------------------------------------- ending
    def terminate(self, code: int, reason: str, initiator: str = "server") -> bool:
        """End the connection (any thread): close message on the signaling DataChannel
        (server-initiated, once switched), WebSocket close frame `code`/`reason`,
        then the session thread cleans up. Returns False if it was already ending.
        """
        with self._lock:
            if self._ending:
                return False
            self._ending = True
            self._end_code = code
            self._end_reason = reason
            switched = self._switched
            ws_open = self._ws_open
        log.debug("session %s: terminate %d %s (%s)", self.connection_id, code, reason, initiator)
        if initiator == "server" and switched:
            self._send_signaling("signaling", {"type": "close", "code": code, "reason": reason})
        if ws_open and not self.ws.closed:
            payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
            try:
                self.ws.send_frame(websocket.OP_CLOSE, payload)
            except (websocket.WebSocketError, TimeoutError, OSError):
                pass
            # If the client never answers the close, drop the socket.
            scheduler = self.server.scheduler
            if scheduler is not None:
                with self._lock:
                    self._timers.append(scheduler.call_later(3.0, self.ws.abort))
        self._ended.set()
        return True

    def _finish(self) -> None:
        """Session thread: leave the channel, close DataChannels and the peer, drop the socket."""
        if not self._ending:
            self.terminate(1000, "")
        if self._attached:
            self.server.registry.detach(self)
        with self._lock:
            self.state = "closed"
            peer = self._peer
            open_ids = [self._dc_ids[label] for label in self._dc_open]
        if peer is not None:
            if open_ids:
                for channel_id in open_ids:
                    self._peer_call("close data channel", lambda p: p.close_data_channel(channel_id))
                # Give the client a moment to see the channels close before the
                # transport goes away (the peer lock is free meanwhile: the
                # dispatcher may need it to deliver the close events).
                deadline = time.monotonic() + 1.0
                with self._lock:
                    while self._dc_open and time.monotonic() < deadline \
                            and peer.connection_state not in ("failed", "closed"):
                        self._dc_cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                # A close event means the client's own stream reset arrived; the SCTP
                # stack answers it right after. Let that answer leave before the
                # transport goes away: a libwebrtc client whose reset is never
                # answered waits out its disconnect_wait_timeout and reports
                # CLOSE_FAILED "Failed to close DataChannel: ec=Connection timed out".
                if peer.connection_state not in ("failed", "closed"):
                    time.sleep(0.2)
            with self._peer_lock:
                try:
                    peer.close()
                except Exception as exc:
                    log.debug("session %s: closing the peer failed: %s", self.connection_id, exc)
        if not self.ws.closed:
            self.ws.close(self._end_code, self._end_reason, timeout=2.0)
        self.ws.abort()
        with self._lock:
            self._ws_open = False
            timers, self._timers = self._timers, []
        for handle in timers:
            handle.cancel()
