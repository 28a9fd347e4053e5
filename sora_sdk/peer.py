"""A WebRTC peer connection of the engine (one webrtcbin), shared by the SDK and the local server."""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Callable, List, Optional

from ._ffi import EventRouter, cbuf, check, cstr, ffi, lib, take_string
from .errors import SoraInvalidState

DIRECTIONS = {
    "inactive": lib.SORA_DIRECTION_INACTIVE,
    "sendonly": lib.SORA_DIRECTION_SENDONLY,
    "recvonly": lib.SORA_DIRECTION_RECVONLY,
    "sendrecv": lib.SORA_DIRECTION_SENDRECV,
}

EVENT_NAMES = {
    lib.SORA_EVENT_ICE_CANDIDATE: "ice-candidate",
    lib.SORA_EVENT_ICE_GATHERING_STATE: "ice-gathering-state",
    lib.SORA_EVENT_ICE_CONNECTION_STATE: "ice-connection-state",
    lib.SORA_EVENT_CONNECTION_STATE: "connection-state",
    lib.SORA_EVENT_TRACK: "track",
    lib.SORA_EVENT_DATA_CHANNEL_OPEN: "data-channel-open",
    lib.SORA_EVENT_DATA_CHANNEL_MESSAGE: "data-channel-message",
    lib.SORA_EVENT_DATA_CHANNEL_CLOSE: "data-channel-close",
    lib.SORA_EVENT_ERROR: "error",
    lib.SORA_EVENT_RTP_PACKET: "rtp-packet",
}


class PeerEvent:
    """An engine event of one peer; `name` is one of EVENT_NAMES' values."""

    __slots__ = ("name", "i0", "i1", "str0", "str1", "str2", "data")

    def __init__(self, ev) -> None:
        self.name = EVENT_NAMES.get(ev.type, "unknown")
        self.i0, self.i1 = ev.i0, ev.i1
        self.str0, self.str1, self.str2 = ev.str0, ev.str1, ev.str2
        self.data = ev.data

    def __repr__(self) -> str:
        return "PeerEvent(%s, %r, %r, %r, %r, %r)" % (self.name, self.i0, self.i1, self.str0, self.str1, self.str2)


class Peer:
    """One peer connection. Events go to `on_event(PeerEvent)` on the dispatcher thread.

    State is mirrored from events: `ice_gathering_state`, `ice_connection_state`,
    `connection_state`.
    """

    def __init__(self, context, *, on_event: Optional[Callable[[PeerEvent], None]] = None,
                 loopback_only: bool = True, local_address: Optional[str] = None,
                 stun_server: Optional[str] = None, latency_ms: int = 0) -> None:
        self._context = context
        self._on_event = on_event
        self.ice_gathering_state = "new"
        self.ice_connection_state = "new"
        self.connection_state = "new"
        self._gathered = threading.Event()
        self._router = EventRouter(self._handle_event, self._handle_destroy)
        cfg = ffi.new("sora_peer_config *")
        cfg.loopback_only = 1 if loopback_only else 0
        keep = [cbuf(local_address), cbuf(stun_server)]
        cfg.local_address = keep[0]
        cfg.stun_server = keep[1]
        cfg.latency_ms = int(latency_ms)
        out = ffi.new("sora_peer **")
        check(lib.sora_peer_create(context.ptr, cfg, self._router.callbacks, out), "create peer")
        self._ptr = out[0]
        self._closed = False
        # Serialises calls with close(): the shim frees the peer after destroy,
        # so no call may start once close() has begun.
        self._lock = threading.RLock()

    # ---- events ----
    def _handle_event(self, ev) -> None:
        event = PeerEvent(ev)
        if event.name == "ice-gathering-state":
            self.ice_gathering_state = event.str0
            if event.str0 == "complete":
                self._gathered.set()
        elif event.name == "ice-connection-state":
            self.ice_connection_state = event.str0
        elif event.name == "connection-state":
            self.connection_state = event.str0
        if self._on_event is not None:
            self._on_event(event)

    def _handle_destroy(self) -> None:
        self._on_event = None

    @contextmanager
    def _use(self):
        with self._lock:
            if self._closed or self._context.closed:
                raise SoraInvalidState("the peer connection is closed")
            yield self._ptr

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- negotiation ----
    def add_transceiver(self, kind: str, direction: str, caps: Optional[str] = None) -> None:
        with self._use() as ptr:
            check(lib.sora_peer_add_transceiver(ptr, cstr(kind), DIRECTIONS[direction], cstr(caps)),
              "add transceiver")

    def set_direction(self, mline: int, direction: str) -> None:
        with self._use() as ptr:
            check(lib.sora_peer_set_direction(ptr, mline, DIRECTIONS[direction]), "set direction")

    def set_remote_description(self, sdp_type: str, sdp: str) -> None:
        with self._use() as ptr:
            check(lib.sora_peer_set_remote_description(ptr, cstr(sdp_type), cstr(sdp)),
              "set remote %s" % sdp_type)

    def create_offer(self) -> str:
        out = ffi.new("char **")
        with self._use() as ptr:
            check(lib.sora_peer_create_offer(ptr, out), "create offer")
        return take_string(out[0])

    def create_answer(self) -> str:
        out = ffi.new("char **")
        with self._use() as ptr:
            check(lib.sora_peer_create_answer(ptr, out), "create answer")
        return take_string(out[0])

    def local_description(self) -> str:
        out = ffi.new("char **")
        with self._use() as ptr:
            check(lib.sora_peer_get_local_description(ptr, out), "local description")
        return take_string(out[0])

    def wait_gathering_complete(self, timeout: float) -> bool:
        return self._gathered.wait(timeout)

    def add_ice_candidate(self, mline: int, candidate: str) -> None:
        with self._use() as ptr:
            check(lib.sora_peer_add_ice_candidate(ptr, mline, cstr(candidate)), "add ICE candidate")

    # ---- media ----
    @staticmethod
    def _codec_params(codec: str, payload_type: int, clock_rate: int, channels: int,
                      bitrate_kbps: int, fmtp: Optional[str], keep: list):
        p = ffi.new("sora_codec_params *")
        keep.append(cbuf(codec))
        keep.append(cbuf(fmtp))
        p.codec = keep[-2]
        p.fmtp = keep[-1]
        p.payload_type = payload_type
        p.clock_rate = clock_rate
        p.channels = channels
        p.bitrate_kbps = bitrate_kbps
        return p

    def attach_video_source(self, source_ptr, mline: int, codec: str, payload_type: int,
                            bitrate_kbps: int = 0, fmtp: Optional[str] = None) -> None:
        keep: list = []
        p = self._codec_params(codec, payload_type, 90000, 0, bitrate_kbps, fmtp, keep)
        with self._use() as ptr:
            check(lib.sora_peer_attach_video_source(ptr, source_ptr, mline, p), "attach video")

    def attach_audio_source(self, source_ptr, mline: int, codec: str, payload_type: int,
                            bitrate_kbps: int = 0, fmtp: Optional[str] = None) -> None:
        keep: list = []
        p = self._codec_params(codec, payload_type, 48000, 2, bitrate_kbps, fmtp, keep)
        with self._use() as ptr:
            check(lib.sora_peer_attach_audio_source(ptr, source_ptr, mline, p), "attach audio")

    def request_key_frame(self) -> None:
        with self._use() as ptr:
            check(lib.sora_peer_request_key_frame(ptr), "request key frame")

    # ---- data channels ----
    def create_data_channel(self, label: str, *, ordered: Optional[bool] = None,
                            max_packet_life_time: Optional[int] = None,
                            max_retransmits: Optional[int] = None, protocol: Optional[str] = None,
                            negotiated: bool = False, channel_id: Optional[int] = None) -> int:
        init = ffi.new("sora_data_channel_init *")
        init.ordered = 0 if ordered is False else 1
        init.max_packet_life_time = -1 if max_packet_life_time is None else max_packet_life_time
        init.max_retransmits = -1 if max_retransmits is None else max_retransmits
        proto = cbuf(protocol)
        init.protocol = proto
        init.negotiated = 1 if negotiated else 0
        init.id = -1 if channel_id is None else channel_id
        out = ffi.new("int32_t *")
        with self._use() as ptr:
            check(lib.sora_peer_create_data_channel(ptr, cstr(label), init, out), "create data channel")
        return out[0]

    def send_data(self, channel_id: int, data: bytes, binary: bool = True) -> None:
        buf = ffi.from_buffer(data)
        with self._use() as ptr:
            check(lib.sora_peer_send_data(ptr, channel_id, buf, len(buf), 1 if binary else 0),
              "send on data channel")

    def close_data_channel(self, channel_id: int) -> None:
        with self._use() as ptr:
            check(lib.sora_peer_close_data_channel(ptr, channel_id), "close data channel")

    def open_data_channel_count(self) -> int:
        with self._use() as ptr:
            return check(lib.sora_peer_open_data_channel_count(ptr), "data channel count")

    # ---- stats / end ----
    def get_stats(self) -> List[dict]:
        """The engine's raw statistics (a list of dicts with a "gst-name" key)."""
        out = ffi.new("char **")
        with self._use() as ptr:
            check(lib.sora_peer_get_stats(ptr, out), "get stats")
        return json.loads(take_string(out[0]))

    def close(self) -> None:
        """Stop media and release the peer (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._context.closed:
                return  # the context already destroyed every peer
            check(lib.sora_peer_destroy(self._ptr), "destroy peer")


class Forward:
    """Re-sends one remote track of `src` on `dst` (the SFU path): RTP payloads pass unchanged."""

    def __init__(self, src: Peer, track_id: int, dst: Peer, mline: int, payload_type: int) -> None:
        out = ffi.new("sora_forward **")
        with src._use() as src_ptr, dst._use() as dst_ptr:
            check(lib.sora_forward_create(src_ptr, track_id, dst_ptr, mline, payload_type, out), "forward track")
        self._ptr = out[0]
        self._context = src._context
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._context.closed:
                check(lib.sora_forward_destroy(self._ptr), "stop forwarding")
