"""A WebRTC peer connection of the engine (one webrtcbin), shared by the SDK and the local server."""
from __future__ import annotations

import json
import math
import random
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._ffi import EventRouter, cbuf, check, cstr, ffi, lib, take_string
from .errors import SoraInvalidArgument, SoraInvalidState

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


SDES_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
SDES_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"


def _number(value: Any, what: str, rid: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SoraInvalidArgument("simulcast encoding %s: %s must be a non-negative number, got %r" % (rid, what, value))
    return float(value)


def plan_simulcast(encodings: List[dict], bitrate_kbps: int = 0) -> List[dict]:
    """Resolve the offer's `encodings` into the layers the engine builds (what the shim would pick by default).

    Each layer: rid, active, scale (scaleResolutionDownBy, default 4/2/1 by position), max_width/max_height
    (scaleResolutionDownTo, 0 = none), bitrate (bps: maxBitrate, else a share of `bitrate_kbps` by layer area),
    max_framerate (0 = none), scalability_mode, ssrc (the given one or a random distinct one).
    """
    if not isinstance(encodings, list) or not encodings or len(encodings) > 8:
        raise SoraInvalidArgument("simulcast needs a list of 1..8 encodings")
    layers: List[dict] = []
    count = len(encodings)
    for index, enc in enumerate(encodings):
        if not isinstance(enc, dict) or not isinstance(enc.get("rid"), str) or not enc["rid"]:
            raise SoraInvalidArgument("simulcast encoding %d has no rid string" % index)
        rid = enc["rid"]
        active = enc.get("active", True)
        scale = 2.0 ** (count - 1 - index)
        if enc.get("scaleResolutionDownBy") is not None:
            scale = _number(enc["scaleResolutionDownBy"], "scaleResolutionDownBy", rid)
            if not 1.0 <= scale <= 1024.0:
                raise SoraInvalidArgument("simulcast encoding %s: scaleResolutionDownBy must be 1..1024" % rid)
        max_width = max_height = 0
        down_to = enc.get("scaleResolutionDownTo")
        if isinstance(down_to, dict):
            max_width = int(_number(down_to.get("maxWidth", 0), "maxWidth", rid))
            max_height = int(_number(down_to.get("maxHeight", 0), "maxHeight", rid))
            if max_width > 65535 or max_height > 65535:
                raise SoraInvalidArgument("simulcast encoding %s: scaleResolutionDownTo is larger than 65535" % rid)
        layers.append({
            "rid": rid, "active": active is not False, "scale": scale, "max_width": max_width,
            "max_height": max_height,
            "bitrate": min(int(_number(enc["maxBitrate"], "maxBitrate", rid)), 2 ** 31 - 1)
            if enc.get("maxBitrate") is not None else 0,
            "max_framerate": _number(enc["maxFramerate"], "maxFramerate", rid)
            if enc.get("maxFramerate") is not None else 0.0,
            "scalability_mode": enc.get("scalabilityMode") if isinstance(enc.get("scalabilityMode"), str) else None,
            "ssrc": enc["ssrc"] if isinstance(enc.get("ssrc"), int) and not isinstance(enc["ssrc"], bool)
            and 0 < enc["ssrc"] < 2 ** 32 else 0,
        })
    total = (bitrate_kbps if bitrate_kbps and bitrate_kbps > 0 else 1000) * 1000
    area = sum(1.0 / (l["scale"] * l["scale"]) for l in layers if l["active"] and not l["bitrate"])
    used = {l["ssrc"] for l in layers if l["ssrc"]}
    for layer in layers:
        if layer["active"] and not layer["bitrate"]:
            layer["bitrate"] = max(int(total * (1.0 / (layer["scale"] * layer["scale"])) / area), 30000)
        while not layer["ssrc"]:
            ssrc = random.getrandbits(32) | 1
            if ssrc not in used:
                used.add(ssrc)
                layer["ssrc"] = ssrc
    return layers


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
        self._simulcast: Dict[int, dict] = {}  # m-line -> {"codec", "layers"} of attach_video_simulcast
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
            with self._context.use():
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

    def attach_video_simulcast(self, source_ptr, mline: int, codec: str, payload_type: int,
                               encodings: List[dict], bitrate_kbps: int = 0, fmtp: Optional[str] = None,
                               extmaps: Optional[Dict[str, int]] = None) -> List[dict]:
        """Send `source` as simulcast on `mline`: one layer per entry of the offer's `encodings`.

        `encodings` are dicts as in Sora's offer (rid, active, scaleResolutionDownBy,
        scaleResolutionDownTo, maxBitrate, maxFramerate, scalabilityMode; optionally ssrc).
        `extmaps` is the offer m-line's {uri: id} (sdp.MediaSection.extmaps); missing ids are
        read from the applied offer by the engine. Returns the layers (see plan_simulcast),
        which get_stats() uses to name each outbound stream's rid.
        """
        layers = plan_simulcast(encodings, bitrate_kbps)
        extmaps = extmaps or {}
        keep: list = []
        p = self._codec_params(codec, payload_type, 90000, 0, bitrate_kbps, fmtp, keep)
        encs = ffi.new("sora_simulcast_encoding[]", len(layers))
        for i, layer in enumerate(layers):
            keep.append(cbuf(layer["rid"]))
            e = encs[i]
            e.rid = keep[-1]
            e.active = 1 if layer["active"] else 0
            e.scale_down_by = layer["scale"]
            e.max_width = layer["max_width"]
            e.max_height = layer["max_height"]
            e.max_bitrate_bps = min(layer["bitrate"], 2 ** 31 - 1)
            e.max_framerate = layer["max_framerate"]
            e.ssrc = layer["ssrc"]
            e.mid_extmap_id = extmaps.get(SDES_MID, 0)
            e.rid_extmap_id = extmaps.get(SDES_RID, 0)
        with self._use() as ptr:
            check(lib.sora_peer_attach_video_simulcast(ptr, source_ptr, mline, p, encs, len(layers)),
                  "attach simulcast video")
            self._simulcast[mline] = {"codec": codec.upper(), "layers": layers}
        return layers

    def simulcast_layers(self) -> Dict[int, dict]:
        """{ssrc: layer} of every simulcast layer attached to this peer (layer["mline"], ["codec"] added)."""
        out: Dict[int, dict] = {}
        for mline, entry in self._simulcast.items():
            for layer in entry["layers"]:
                out[layer["ssrc"]] = dict(layer, mline=mline, codec=entry["codec"])
        return out

    def request_remote_key_frame(self, track_id: int) -> None:
        """Ask the sender of remote track `track_id` for a key frame (RTCP PLI)."""
        with self._use() as ptr:
            check(lib.sora_peer_request_remote_key_frame(ptr, track_id), "request remote key frame")

    def track_rid(self, track_id: int) -> Tuple[Optional[str], int]:
        """(rid, ssrc) of remote track `track_id`, read from its first RTP packets: rid is the simulcast
        RTP stream id (None when the track has none, or before a packet with it arrived), ssrc is 0
        before the first packet."""
        rid_out = ffi.new("char **")
        ssrc_out = ffi.new("uint32_t *")
        with self._use() as ptr:
            check(lib.sora_peer_track_rid(ptr, track_id, rid_out, ssrc_out), "track rid")
        rid = take_string(rid_out[0]) if rid_out[0] != ffi.NULL else None
        return rid, int(ssrc_out[0])

    def request_key_frame(self) -> None:
        with self._use() as ptr:
            check(lib.sora_peer_request_key_frame(ptr), "request key frame")

    def set_video_encoder(self, codec: str, element: Optional[str]) -> None:
        """Encode `codec` with engine element `element` in video branches attached later (None: default)."""
        with self._use() as ptr:
            check(lib.sora_peer_set_video_encoder(ptr, cstr(codec), cstr(element) if element else ffi.NULL),
                  "set video encoder")

    def set_degradation_preference(self, preference: int) -> None:
        """How the video branches give way when the send bandwidth estimate is low: a
        SoraDegradationPreference value (0 DISABLED: bitrate only, 1 MAINTAIN_FRAMERATE: lower the
        resolution, 2 MAINTAIN_RESOLUTION: lower the frame rate, 3 BALANCED: both in turn)."""
        with self._use() as ptr:
            check(lib.sora_peer_set_degradation_preference(ptr, int(preference)), "set degradation preference")

    def set_remb(self, bitrate_bps: int) -> None:
        """Announce `bitrate_bps` as this peer's receive bandwidth to the remote senders (RTCP REMB about
        every 250 ms); 0 stops."""
        with self._use() as ptr:
            check(lib.sora_peer_set_remb(ptr, int(bitrate_bps)), "set REMB")

    # ---- encoded-frame transforms ----
    def set_send_transform(self, mline: int, transform) -> None:
        """Route the branch attached later at `mline` through an EngineTransform (None: none)."""
        with self._use() as ptr:
            check(lib.sora_peer_set_send_transform(ptr, mline, transform.ptr if transform else ffi.NULL),
                  "set send transform")

    def set_track_transform(self, track_id: int, transform) -> None:
        """Route the sinks created later on remote track `track_id` through an EngineTransform (None: none)."""
        with self._use() as ptr:
            check(lib.sora_peer_set_track_transform(ptr, track_id, transform.ptr if transform else ffi.NULL),
                  "set track transform")

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

    def buffered_amount(self, channel_id: int) -> int:
        """Bytes queued on the data channel and not yet handed to SCTP (RTCDataChannel.bufferedAmount)."""
        out = ffi.new("uint64_t *")
        with self._use() as ptr:
            check(lib.sora_peer_data_channel_buffered_amount(ptr, channel_id, out), "data channel buffered amount")
        return int(out[0])

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
        raw = json.loads(take_string(out[0]))
        if self._simulcast:
            self._add_simulcast_stats(raw)
        return raw

    def _add_simulcast_stats(self, raw: List[dict]) -> None:
        """Tag each simulcast layer's outbound-rtp with its layer ("sora-simulcast"); list the layers the
        engine has not reported with the RTP session's counts ("sora-rtp-senders"; zero for paused ones or none
        sent yet), as libwebrtc lists every encoding."""
        layers = self.simulcast_layers()
        active = {}
        for layer in layers.values():
            active[layer["mline"]] = active.get(layer["mline"], 0) + (1 if layer["active"] else 0)
        seen = set()
        # what the RTP sessions counted for each stream we send (the engine lists no layer but one in 1.26)
        senders = next((i for i in raw if i.get("gst-name") == "sora-rtp-senders"), {})
        for item in raw:
            layer = layers.get(item.get("ssrc")) if item.get("type") == "outbound-rtp" else None
            if layer is not None:
                item["sora-simulcast"] = dict(layer, active_layers=active[layer["mline"]])
                seen.add(layer["ssrc"])
        for ssrc, layer in layers.items():
            if ssrc not in seen:
                counted = senders.get("ssrc-%d" % ssrc) or {}
                entry = {key: value for key, value in counted.items() if key.startswith("sora-")}  # bwe.c's fields
                entry.update({"gst-name": "outbound-rtp", "type": "outbound-rtp",
                              "id": "rtp-outbound-stream-stats_%d" % ssrc, "ssrc": ssrc, "kind": "video",
                              "bytes-sent": counted.get("bytes-sent", 0),
                              "packets-sent": counted.get("packets-sent", 0),
                              "sora-simulcast": dict(layer, active_layers=active[layer["mline"]])})
                raw.append(entry)

    def close(self) -> None:
        """Stop media and release the peer (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # A closed context already destroyed every peer.
            check(self._context.call(lib.sora_peer_destroy, self._ptr, closed=0), "destroy peer")


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
            check(self._context.call(lib.sora_forward_destroy, self._ptr, closed=0), "stop forwarding")
