"""Media forwarding of the local Sora server: the SFU part of a channel (multistream).

Every sending connection (role sendonly/sendrecv) has its media received by its
server peer (recvonly transceivers, see Session._build_offer). Every receiving
connection (recvonly/sendrecv) gets, on its own server peer, one sendonly
transceiver per kind (audio, video) per sender of the channel -- a *slot* --
and the sender's RTP is re-sent on it by a `peer.Forward` (payload and SSRC
kept, the sender's header extensions dropped, key-frame requests passed back
to the sender).

Negotiation, as real Sora does it:

* a sender's track gets slots once its SSRC is known: from the client's
  answer (libwebrtc and our SDK announce it), else once its media reached the
  server (the "track" event; the SSRC then comes from the server peer's stats);
  forwarding starts when the slot is negotiated and the media is there;
* a receiver that joins after senders gets their slots in its **initial offer**
  (`offer_slots` + `decorate_offer` while the session builds the offer);
* a sender that joins (or whose tracks arrive) later, or one that leaves, changes the slots of
  the receivers already there: their server peers add transceivers (or set the
  leaving sender's to ``inactive``), create a new offer and send
  ``{"type":"re-offer","sdp":...}`` (on the ``signaling`` DataChannel once the
  connection switched, else on the WebSocket); the client's ``re-answer`` is
  applied and the forwards start. One re-offer is out per receiver at a time;
  changes meanwhile go in the next one.

Slot m-lines carry ``a=msid:<sender connection_id> <track id>`` and
``a=ssrc:<sender's SSRC> ...``, written into the SDP text sent to the client:
webrtcbin offers no msid for a transceiver without a linked pad, the client
reads the msid stream id as `SoraMediaTrack.stream_id`, and the SSRC lets the
client's webrtcbin tie each forwarded stream to its m-line (several m-lines
share a payload type once a channel has several senders; without the SSRC the
streams land on m-lines in arrival order).

Bandwidth. The m-lines on which a connection sends are offered with the
transport-wide-cc extmap (`receive_caps`): its packets carry transport-wide
sequence numbers and the server peer's rtpsession answers with RTCP
transport-cc feedback (counted in the peer's "sora-rtcp-sent" statistics), on
which libwebrtc's bandwidth estimate runs; its video m-line carries
``b=AS:<video_bit_rate>`` (`bandwidth_offer`, in re-offers too), which
libwebrtc takes as its video send limit. Forwards drop every header extension
(csrc/src/fwdout.c), so a sender's transport-wide numbers never reach receivers,
whose m-lines negotiate none.

All negotiation and forward work of one channel runs on one worker thread (the
`_Serial` executor), so slots, peers and forwards are changed in one order.

Simulcast (signaling.md §11). A connection with ``"simulcast": true`` that sends
video gets a video m-line offering ``a=rid:r0 recv`` ... and
``a=simulcast:recv r0;r1;r2`` (with the sdes:mid / rtp-stream-id extmaps) and
``"encodings"`` in the offer JSON: by default three layers as Sora's (r0 at 1/4
size, r1 at 1/2, r2 full; ``maxBitrate`` shares the video bit rate, default
1000 kbps, by layer area), or the JWT / auth-hook override
``simulcast_encodings`` (an ``"active": false`` layer is offered paused,
``~rid``). Each layer reaches the server peer as its own track; its rid comes
from the rtp-stream-id header extension of its first packets
(`Peer.track_rid`). A track of a simulcast sender without a rid is forwarded
as a plain stream.

A receiver's slot for a simulcast sender forwards **one** layer: the one it
requests. Reading of the reference (signaling.md §3, §11; the JS/iOS/Android
SDKs): the connect's ``simulcast_request_rid`` (``"r0"``/``"r1"``/``"r2"``, or
``"none"``: no video of simulcast senders; Sora's successor of
``simulcast_rid``, which the SDKs deprecate in its favour) names the layer a
receiver wants of every simulcast sender; it wins over ``simulcast_rid``; with
neither the receiver gets ``r0`` (Sora's default; for simulcast and
non-simulcast receivers alike). Changing it later (Sora's RequestSimulcastRid
RPC/API) is not implemented. If that layer is paused or not arriving (no
packet for ``LAYER_TIMEOUT`` s) the nearest lower layer is forwarded, else the
nearest higher one. Switching layers stops
the slot's forward and starts one from the other layer's track on the same
m-line: the engine keeps the m-line's RTP stream (SSRC, sequence numbers and
timestamps continue, see csrc/src/fwdout.c) and drops the new layer's packets
until its first key frame, so the receiver keeps one track whose picture
changes size, without renegotiation. Key-frame requests of the receiver go to
the layer being forwarded. The slot's announced SSRC (``a=ssrc``) is that of
the first layer forwarded on it.

Each change of the layer a receiver gets of a sender (the first choice, a
fallback when a layer stops, the switch back up, a spotlight focus change, and
``"none"``: forwarding stopped) is notified to it with ``simulcast.switched``
(signaling.md §7; fields as the JS SDK's type): ``sender_connection_id``;
``request_rid`` (what the receiver asked for: its request above, or the
spotlight focus/unfocus rid that applies); ``current_rid`` and
``previous_rid`` (``"none"`` before the first layer and while nothing is
forwarded); ``trigger`` ``"receiver"`` when the receiver's own request decided
it (its first choice when it joins) and ``"sender"`` when what a sender sends
changed (its layers arrive, stop or come back, a new sender, a spotlight focus
change); ``priority`` ``"lower"`` (a missing layer is replaced by a lower one
first); ``auto_rids`` the sender's layers arriving now, lowest first (those
the server picks from); ``rpc_rids`` ``[]`` (no RPC here).

Spotlight. A receiver that connects with ``"spotlight": true`` (which also
makes its own video simulcast) gets up to ``spotlight_number`` (default
``DEFAULT_SPOTLIGHT_NUMBER`` = 1) *focused* senders at ``spotlight_focus_rid``
(default ``r2``) and every other sender at ``spotlight_unfocus_rid`` (default
``r0``); ``"none"`` means that sender's video is not forwarded (its slot stays,
silent). Focused are the most recent speakers: while a channel has spotlight
receivers, the server decodes each sender's audio (16 kHz mono) and a sender
starts speaking when its level stays above ``SPEECH_RMS`` for ``SPEECH_RUN``
buffers after at least ``SILENCE_GAP`` seconds of quiet; senders are ranked by
when they last started speaking (a steady sound does not flap the order), then
those that never spoke by join order. `MediaRouter.spotlight_focus`
(``LocalSora.spotlight_focus``) puts a sender first (``fixed``) and
`MediaRouter.spotlight_unfocus` puts it last. Each change
of a receiver's focus set is notified to it (``spotlight.focused`` /
``spotlight.unfocused`` with channel_id, connection_id, client_id, audio,
video, fixed) and switches the layers it gets. Audio, and the video of a
sender that does not simulcast, are forwarded as usual.
"""
from __future__ import annotations

import collections
import logging
import re
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .._ffi import ffi, lib
from ..media.sink import EngineSink
from ..peer import SDES_MID, SDES_RID, Forward
from ..sdp import direction_problem
from .codec_sdp import offer_codecs
from .filters import forwarded

log = logging.getLogger("sora_sdk.testing")

VIDEO_CAPS = {
    "VP8": "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
    "VP9": "application/x-rtp,media=video,encoding-name=VP9,payload=98,clock-rate=90000",
    "AV1": "application/x-rtp,media=video,encoding-name=AV1,payload=45,clock-rate=90000",
    "H264": ("application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
             "packetization-mode=(string)1,profile-level-id=(string)42e01f"),
    "H265": "application/x-rtp,media=video,encoding-name=H265,payload=103,clock-rate=90000",
}
AUDIO_CAPS = {
    "OPUS": ("application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
             "encoding-params=(string)2"),
}

SENDING_ROLES = ("sendonly", "sendrecv")
RECEIVING_ROLES = ("recvonly", "sendrecv")

# How long a leaving connection waits for the channel's media worker.
LEAVE_TIMEOUT = 5.0
# After a sender's track arrives, wait this long before re-offering, so its
# audio and video (a few ms apart) go in one re-offer.
TRACK_SETTLE = 0.1
# A re-offer without a re-answer for this long no longer blocks the next one.
REOFFER_TIMEOUT = 10.0

# Simulcast and spotlight (see the module docstring).
RIDS = ("r0", "r1", "r2")
DEFAULT_SIMULCAST_RID = "r0"
DEFAULT_SPOTLIGHT_NUMBER = 1
SPEECH_RMS = 500.0   # int16 RMS (about -36 dBFS) that counts as voice
SPEECH_RUN = 3       # consecutive 20 ms buffers of voice to start speaking
SILENCE_GAP = 0.8    # seconds of quiet before a new start of speaking
DEFAULT_SPOTLIGHT_FOCUS_RID = "r2"
DEFAULT_SPOTLIGHT_UNFOCUS_RID = "r0"
DEFAULT_VIDEO_BIT_RATE = 1000  # kbps, shared by the default layers
SCALES = (4.0, 2.0, 1.0)       # scaleResolutionDownBy of r0, r1, r2
MID_EXTMAP_ID = 4
RID_EXTMAP_ID = 10
# Congestion feedback for senders (see receive_caps): transport-wide sequence numbers (extmap id 3,
# as browsers use it; 4 and 10 are the simulcast ones) and RTCP transport-cc feedback.
TWCC_EXTMAP_ID = 3
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
# A layer without a new packet for this long is not arriving; layers are checked every LAYER_POLL s.
LAYER_TIMEOUT = 2.0
LAYER_POLL = 0.5
# How long a new track's rid is waited for before it counts as a plain (non-simulcast) stream.
RID_WAIT = 0.5

_RID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")


def rid_ok(value: Any) -> bool:
    return isinstance(value, str) and _RID_RE.match(value) is not None


# Codecs whose encoder libwebrtc runs as one SVC encoder unless each encoding names a
# scalabilityMode: without it a VP9 or AV1 sender sends one stream (r0) instead of three layers.
SVC_CODECS = ("VP9", "AV1")
SIMULCAST_SCALABILITY_MODE = "L1T1"


def default_encodings(bit_rate_kbps: Any = None, codec: Optional[str] = None) -> List[Dict[str, Any]]:
    """Sora's three layers: r0 at 1/4 size, r1 at 1/2, r2 full, maxBitrate sharing the bit rate by area;
    for VP9 and AV1 each layer also carries ``scalabilityMode`` L1T1 (see SVC_CODECS)."""
    rate = bit_rate_kbps if isinstance(bit_rate_kbps, (int, float)) and not isinstance(bit_rate_kbps, bool) \
        and bit_rate_kbps > 0 else DEFAULT_VIDEO_BIT_RATE
    total = rate * 1000
    area = sum(1.0 / (scale * scale) for scale in SCALES)
    out = [{"rid": rid, "active": True, "scaleResolutionDownBy": scale,
            "maxBitrate": max(int(total / (scale * scale) / area), 30000)}
           for rid, scale in zip(RIDS, SCALES)]
    if isinstance(codec, str) and codec.upper() in SVC_CODECS:
        for encoding in out:
            encoding["scalabilityMode"] = SIMULCAST_SCALABILITY_MODE
    return out


def session_encodings(session) -> List[Dict[str, Any]]:
    """The offer's encodings for a simulcast sender: the auth override, else default_encodings."""
    override = getattr(session, "simulcast_encodings", None)
    if override:
        return [dict(e) for e in override]
    return default_encodings(session.video_bit_rate, getattr(session, "video_codec_type", None))


def simulcast_caps(caps: str, encodings: List[Dict[str, Any]]) -> str:
    """`caps` of a recvonly video transceiver that offers a=rid:X recv per encoding and a=simulcast:recv."""
    out = caps + ",extmap-%d=%s,extmap-%d=%s" % (MID_EXTMAP_ID, SDES_MID, RID_EXTMAP_ID, SDES_RID)
    out += "".join(",rid-%s=recv" % e["rid"] for e in encodings)
    out += ',a-simulcast="recv %s"' % ";".join(("~" if e.get("active") is False else "") + e["rid"]
                                               for e in encodings)
    return out


def receive_caps(caps: str) -> str:
    """`caps` of a transceiver that receives a client's media: with the transport-wide-cc extmap.

    A libwebrtc sender that negotiates it numbers its packets (all m-lines, BUNDLE) and runs its
    delay-based bandwidth estimate on the server peer's RTCP transport-cc feedback (GStreamer's
    rtpsession sends it once the negotiated caps carry the extmap); without feedback it stays near its
    300 kbps start rate. ``a=rtcp-fb:<pt> transport-cc`` is in every webrtcbin offer already."""
    return caps + ',extmap-%d=(string)"%s"' % (TWCC_EXTMAP_ID, TWCC_URI)


def bandwidth_offer(session, sdp: str) -> str:
    """`sdp` with ``b=AS:<video_bit_rate>`` on the connection's own video m-line when it sends video
    with a bit rate: libwebrtc caps its video send rate (encoder and bandwidth estimate) at it."""
    rate = getattr(session, "video_bit_rate", None)
    if ("video" not in [kind for kind, _ in sent_kinds(session)] or not isinstance(rate, (int, float))
            or isinstance(rate, bool) or rate < 1):
        return sdp
    head, sections = split_sections(sdp)
    for section in sections:
        if section_kind(section) != "video":
            continue
        # the first video m-line: the connection's own (its m-lines come before any slot)
        section[:] = [line for line in section if not line.startswith("b=")]
        at = next((i + 1 for i, line in enumerate(section) if line.startswith("c=")), 1)
        section.insert(at, "b=AS:%d" % int(rate))
        return join_sections(head, sections)
    return sdp


def pick_layer(order: List[str], available: List[str], wanted: str) -> Optional[str]:
    """The layer to forward for `wanted`: itself if available, else the nearest lower one, else the nearest higher."""
    if not available:
        return None
    if wanted in available:
        return wanted
    rank = {rid: i for i, rid in enumerate(order)}
    want = rank.get(wanted, RIDS.index(wanted) if wanted in RIDS else 0)
    lower = [r for r in available if rank.get(r, 0) < want]
    if lower:
        return max(lower, key=lambda r: rank.get(r, 0))
    return min(available, key=lambda r: rank.get(r, 0))

_PAYLOAD_RE = re.compile(r"payload=(?:\(int\))?(\d+)")


def caps_payload_type(caps: str) -> int:
    match = _PAYLOAD_RE.search(caps)
    if match is None:
        raise ValueError("caps without a payload type: %s" % caps)
    return int(match.group(1))


def caps_for(kind: str, codec: str) -> str:
    return AUDIO_CAPS[codec] if kind == "audio" else VIDEO_CAPS[codec]


def sent_kinds(session) -> List[Tuple[str, str]]:
    """(kind, codec) of what a connection sends (empty for a recvonly one)."""
    if session.role not in SENDING_ROLES:
        return []
    out = []
    if session.audio and session.audio_codec_type:
        out.append(("audio", session.audio_codec_type))
    if session.video and session.video_codec_type:
        out.append(("video", session.video_codec_type))
    return out


def received_kinds(session) -> Tuple[str, ...]:
    """The kinds a connection wants to receive from the others (empty for a sendonly one)."""
    if session.role not in RECEIVING_ROLES:
        return ()
    return tuple(k for k, on in (("audio", session.audio), ("video", session.video)) if on)


# ---------------------------------------------------------------------------- SDP text
def split_sections(sdp: str) -> Tuple[List[str], List[List[str]]]:
    """(session-level lines, [lines of each m-section]) of an SDP text."""
    head: List[str] = []
    sections: List[List[str]] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            head.append(line)
    return head, sections


def join_sections(head: List[str], sections: List[List[str]]) -> str:
    lines = list(head)
    for section in sections:
        lines.extend(section)
    return "\r\n".join(lines) + "\r\n"


def section_kind(section: List[str]) -> str:
    return section[0][2:].split(" ", 1)[0]


def section_attr(section: List[str], name: str) -> Optional[str]:
    prefix = "a=%s:" % name
    for line in section:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def section_direction(section: List[str]) -> Optional[str]:
    for line in section:
        if line in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"):
            return line[2:]
    return None


def own_media_mids(sdp: str, count: int) -> Tuple[str, ...]:
    """The a=mid of the first `count` audio/video m-lines of `sdp` (a connection's own m-lines)."""
    mids: List[str] = []
    _, sections = split_sections(sdp)
    for section in sections:
        if len(mids) >= count:
            break
        if section_kind(section) in ("audio", "video"):
            mid = section_attr(section, "mid")
            if mid is not None:
                mids.append(mid)
    return tuple(mids)


def mark_own_placeholders(sdp: str, mids, connection_id: str) -> str:
    """`sdp` with `a=msid:<connection_id> <mid>` added to the m-sections whose a=mid is in `mids`.

    A recvonly connection's own placeholder m-lines stay sendonly (webrtcbin, on
    either side, only passes DTLS on a BUNDLE transport whose m-lines carry media
    one way or the other). Without a=msid, libwebrtc fires OnTrack with no stream
    id and the official SDK aborts; with the connection's own id as stream id,
    clients recognise (and skip) their own placeholders, as Sora's JS SDK does.
    """
    if not mids:
        return sdp
    head, sections = split_sections(sdp)
    changed = False
    for section in sections:
        mid = section_attr(section, "mid")
        if mid not in mids or section_attr(section, "msid") is not None:
            continue
        at = next((i for i, line in enumerate(section) if line.startswith("a=mid:")), len(section) - 1)
        section.insert(at + 1, "a=msid:%s %s" % (connection_id, mid))
        changed = True
    return join_sections(head, sections) if changed else sdp


def placeholder_offer(session, sdp: str) -> str:
    """The offer text for the client: its own placeholder m-lines carry its own connection id as msid."""
    return mark_own_placeholders(sdp, getattr(session, "placeholder_mids", ()), session.connection_id)


def placeholder_answer(session, sdp: str) -> str:
    """The client's answer as applied to its server peer: rejected m-lines kept in place (`keep_rejected`).
    ValueError if an m-line's direction is not one RFC 3264 allows for the server's offer
    (``session.local_offer``): webrtcbin 1.26 aborts the process on some of those."""
    offer = getattr(session, "local_offer", None)
    problem = direction_problem(offer, sdp) if offer else None
    if problem is not None:
        raise ValueError(problem)
    return keep_rejected(session, sdp)


def checked_offer(session, sdp: str) -> str:
    """`sdp` (an offer the server peer has just set as its local description), kept as
    ``session.local_offer``; RuntimeError if an m-line has more than one direction (webrtcbin would abort
    when the answer comes)."""
    problem = direction_problem(sdp)
    if problem is not None:
        raise RuntimeError(problem)
    session.local_offer = sdp
    return sdp


def keep_rejected(session, sdp: str) -> str:
    """`sdp` (a client's answer) with each rejected m-line (port 0) applied as ``inactive`` instead; the
    rejected mids are stored in ``session.rejected_mids``.

    A client rejects an m-line it cannot use, e.g. a slot whose codec its preference cannot decode.
    GStreamer 1.22's webrtcbin, given a port-0 answer section, drops that transceiver's mid but keeps
    its m-line index; the next offer it builds then either fails ("has locked mline N but the offer
    only has M sections") or aborts the whole process (the assertion ``trans->mline == -1 ||
    trans->mline == media_idx`` in ``sdp_media_from_transceiver``), once a sender leaves. Applied as
    ``inactive`` (same mid, same index, in the BUNDLE group), the section stays where it is in every
    later offer, as JSEP asks, and the slot is never forwarded (`Slot` state ``rejected``)."""
    head, sections = split_sections(sdp)
    rejected: List[str] = []
    # The transport lines of the BUNDLE (libwebrtc writes other ones, or none, in a rejected section).
    shared = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")
    accepted = next((sec for sec in sections if len(sec[0].split(" ")) > 1 and sec[0].split(" ")[1] != "0"), [])
    transport = [line for line in accepted if line.startswith(shared)]
    for section in sections:
        parts = section[0].split(" ")
        if len(parts) < 2 or parts[1] != "0" or section_kind(section) not in ("audio", "video"):
            continue
        mid = section_attr(section, "mid")
        if mid is None:
            continue
        rejected.append(mid)
        parts[1] = "9"
        section[0] = " ".join(parts)
        section[:] = [line for line in section if line not in ("a=sendonly", "a=recvonly", "a=sendrecv",
                                                               "a=inactive", "a=bundle-only")
                      and not line.startswith(shared)]
        section.extend(transport)
        section.append("a=inactive")
    session.rejected_mids = tuple(rejected)
    if not rejected:
        return sdp
    for i, line in enumerate(head):
        if line.startswith("a=group:BUNDLE"):
            present = line.split()[1:]
            head[i] = " ".join(["a=group:BUNDLE"] + present + [m for m in rejected if m not in present])
    return join_sections(head, sections)


def settle_slots(receiver) -> None:
    """(lock held) The slot states once the client's (re-)answer is applied: offered -> active, or
    rejected if the client rejected its m-line (and back to active if a later answer accepts it);
    stopped -> inactive."""
    rejected = getattr(receiver.session, "rejected_mids", ())
    for slot in receiver.slots:
        if slot.state in ("offered", "active", "rejected"):
            slot.state = "rejected" if slot.mid is not None and slot.mid in rejected else "active"
        elif slot.state == "stopped":
            slot.state = "inactive"


def sender_track_info(answer_sdp: Optional[str]) -> Dict[str, Tuple[Optional[str], Optional[int]]]:
    """kind -> (track id, primary SSRC) of what a sending client announced in its answer."""
    info: Dict[str, Tuple[Optional[str], Optional[int]]] = {}
    if not answer_sdp:
        return info
    _, sections = split_sections(answer_sdp)
    for section in sections:
        kind = section_kind(section)
        if kind not in ("audio", "video") or kind in info:
            continue
        if section_direction(section) not in ("sendonly", "sendrecv"):
            continue
        track_id = None
        msid = section_attr(section, "msid")
        if msid and len(msid.split()) > 1:
            track_id = msid.split()[1]
        ssrc = None
        group = section_attr(section, "ssrc-group")
        if group and group.startswith("FID ") and len(group.split()) > 1:
            ssrc = _to_ssrc(group.split()[1])
        if ssrc is None:
            first = section_attr(section, "ssrc")
            if first:
                ssrc = _to_ssrc(first.split(" ", 1)[0])
        info[kind] = (track_id, ssrc)
    return info


def _to_ssrc(text: str) -> Optional[int]:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 <= value < 1 << 32 else None


# ---------------------------------------------------------------------------- state
class Slot:
    """One sendonly transceiver of a receiver's server peer, carrying one track of one sender.

    states: ``offered`` (in an offer not answered yet), ``active`` (negotiated;
    forwarding once the sender's track is there), ``rejected`` (the client answered
    the m-line with port 0, e.g. a codec it cannot decode: kept, never forwarded; see
    `keep_rejected`), ``stopped`` (the sender left: set inactive, waiting for the
    next offer), ``inactive`` (negotiated inactive).
    """

    __slots__ = ("sender_id", "kind", "codec", "caps", "payload_type", "track_label", "ssrc", "index",
                 "mline", "mid", "state", "forward", "source", "rid", "started", "notified")

    def __init__(self, sender_id: str, kind: str, codec: str, index: int, track_label: str,
                 ssrc: Optional[int]) -> None:
        self.sender_id = sender_id
        self.kind = kind
        self.codec = codec
        self.caps = caps_for(kind, codec)
        self.payload_type = caps_payload_type(self.caps)
        self.track_label = track_label
        self.ssrc = ssrc
        self.index = index          # position among the peer's audio/video transceivers
        self.mline: Optional[int] = None
        self.mid: Optional[str] = None
        self.state = "offered"
        self.forward: Optional[Forward] = None
        self.source: Optional[int] = None  # the sender's engine track forwarded now
        self.rid: Optional[str] = None     # its simulcast layer (None: not simulcast)
        self.started = False               # a forward ran: the m-line's SSRC is fixed
        self.notified = "none"             # the layer last notified (simulcast.switched)

    @property
    def live(self) -> bool:
        return self.state in ("offered", "active", "rejected")

    def __repr__(self) -> str:
        return "Slot(%s %s/%s m=%s %s)" % (self.sender_id[:6], self.kind, self.codec, self.mline, self.state)


class Receiver:
    def __init__(self, session, own_count: int) -> None:
        self.session = session
        self.own_count = own_count   # the connection's own audio/video transceivers come first
        self.slots: List[Slot] = []
        self.joined = False
        self.negotiating = False     # a re-offer is out, waiting for its re-answer
        self.dirty = False           # something changed while negotiating
        self.generation = 0
        self.re_offers = 0
        self.focused: set = set()    # spotlight: the senders last notified as focused


class Sender:
    def __init__(self, session) -> None:
        self.session = session
        self.tracks: Dict[str, int] = {}          # kind -> engine track id on the sender's server peer
        self.ssrcs: Dict[str, Optional[int]] = {}  # kind -> the client's SSRC for it
        self.labels: Dict[str, str] = {}          # kind -> track id announced to receivers (a=msid)
        self.joined = False
        self.join_seq = 0
        # Simulcast video: rid -> (engine track id, SSRC) of each layer that arrived.
        self.layers: Dict[str, Tuple[int, Optional[int]]] = {}
        self.stale: set = set()                   # rids not arriving (LAYER_TIMEOUT)
        self.layer_packets: Dict[str, Tuple[int, float]] = {}  # rid -> (packets received, when they grew)
        # Spotlight order set through the API: (0, -t) focused first, (3, t) unfocused last.
        self.spotlight_rank: Optional[Tuple[int, float]] = None
        self.speech_start: Optional[float] = None  # when it last started speaking (spotlight)
        self.last_voice = 0.0
        self.voice_run = 0
        self.meter = None  # EngineSink decoding its audio for the speaker detection

    def ready_kinds(self) -> List[Tuple[str, str]]:
        """(kind, codec) of the tracks receivers can be offered: their SSRC is known (from the
        client's answer) or their media already reached the server."""
        return [(k, c) for k, c in sent_kinds(self.session)
                if k in self.tracks or self.ssrcs.get(k) is not None or (k == "video" and self.layers)]

    def rid_order(self) -> List[str]:
        """The sender's rids, lowest layer first (the order of its offer's encodings)."""
        encodings = getattr(self.session, "encodings", None)
        return [e["rid"] for e in encodings] if encodings else list(RIDS)

    def live_layers(self) -> List[str]:
        """The layers arriving now (all known ones if none is)."""
        known = [rid for rid in self.rid_order() if rid in self.layers]
        live = [rid for rid in known if rid not in self.stale]
        return live or known

    def layer_with_ssrc(self, ssrc: Optional[int]) -> Optional[Tuple[int, str]]:
        for rid, (track_id, layer_ssrc) in self.layers.items():
            if ssrc is not None and layer_ssrc == ssrc:
                return track_id, rid
        return None

    def spotlight_key(self) -> Tuple[int, float]:
        if self.spotlight_rank is not None:
            return self.spotlight_rank
        if self.speech_start is not None:
            return (1, -self.speech_start)  # the most recent speaker first
        return (2, float(self.join_seq))

    def track_label(self, kind: str) -> str:
        label = self.labels.get(kind)
        if label is None:
            label = str(uuid.uuid4())
            self.labels[kind] = label
        return label


class _Serial:
    """Runs submitted callables one at a time on a thread that exists only while there is work."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._tasks: "collections.deque" = collections.deque()
        self._thread: Optional[threading.Thread] = None

    def submit(self, fn: Callable[[], Any]) -> threading.Event:
        done = threading.Event()
        with self._lock:
            self._tasks.append((fn, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return done

    def run_and_wait(self, fn: Callable[[], Any], timeout: float) -> bool:
        if threading.current_thread() is self._thread:
            fn()
            return True
        return self.submit(fn).wait(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._tasks:
                    self._thread = None
                    return
                fn, done = self._tasks.popleft()
            try:
                fn()
            except Exception:
                log.exception("local Sora: media task failed")
            finally:
                done.set()


def _request_remote_key_frame(session, track_id: int, kind: str) -> bool:
    """Send a key-frame request (RTCP PLI) to the client for one track its server peer receives."""
    def call(peer):
        peer.request_remote_key_frame(track_id)
        return True
    return bool(session._peer_call("remote key frame request", call, False))


def _received_ssrcs(session) -> Dict[str, int]:
    """kind -> SSRC of what a server peer receives, from its stats.

    The engine's `kind` field is unreliable; the clock rate of the RTP source
    is not (48 kHz Opus, 90 kHz video). The busiest source wins (an RTX stream
    has the video clock rate too).
    """
    stats = session._peer_call("stats", lambda peer: peer.get_stats(), None) or []
    best: Dict[str, Tuple[int, int]] = {}
    for entry in stats:
        if not isinstance(entry, dict) or entry.get("type") != "inbound-rtp":
            continue
        source = entry.get("gst-rtpsource-stats")
        rate = source.get("clock-rate") if isinstance(source, dict) else None
        ssrc = entry.get("ssrc")
        if not isinstance(ssrc, int) or rate not in (48000, 90000):
            continue
        kind = "audio" if rate == 48000 else "video"
        packets = entry.get("packets-received")
        packets = packets if isinstance(packets, int) else 0
        if kind not in best or packets > best[kind][1]:
            best[kind] = (ssrc, packets)
    return {kind: value[0] for kind, value in best.items()}


class MediaRouter:
    """The SFU of one channel (see the module docstring)."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._senders: Dict[str, Sender] = {}
        self._receivers: Dict[str, Receiver] = {}
        self._worker = _Serial("local-sora-media")
        self._settle_pending = False
        self._join_seq = 0
        self._layer_poll = False  # a layer check is scheduled

    # ---- called by sessions / the registry ----
    def offer_slots(self, session, peer, own_count: int) -> None:
        """Session thread, before the initial offer: a slot per track of each sender already there."""
        wanted = received_kinds(session)
        with self._lock:
            receiver = Receiver(session, own_count)
            self._receivers[session.connection_id] = receiver
            plan = [(sender, kind, codec) for sender in self._senders.values()
                    if sender.joined and sender.session is not session and not sender.session._ending
                    for kind, codec in sender.ready_kinds()
                    if kind in wanted and forwarded(session, sender.session, kind)]
        for sender, kind, codec in plan:
            self._add_slot(receiver, peer, sender, kind, codec)

    def decorate_offer(self, session, sdp: str) -> str:
        """The offer text for the client: slot m-lines get the sender's msid (and SSRC)."""
        with self._lock:
            receiver = self._receivers.get(session.connection_id)
        if receiver is None or not receiver.slots:
            return sdp
        return self._decorate(receiver, sdp)

    def connection_joined(self, session) -> None:
        """Registry (session thread): the answer is applied and connection.created sent."""
        self._worker.submit(lambda: self._joined(session))

    def connection_left(self, session) -> None:
        """Registry (session thread), before the server peer is closed: stop its forwards."""
        if not self._worker.run_and_wait(lambda: self._left(session), LEAVE_TIMEOUT):
            log.warning("local Sora: media clean-up of %s timed out", session.connection_id)

    def track_added(self, session, event) -> None:
        """A sending connection's track arrived on its server peer (dispatcher thread)."""
        kind = event.str0
        if kind not in ("audio", "video"):
            return
        track_id = event.i0
        self._worker.submit(lambda: self._track(session, kind, track_id))

    def rtp_packet(self, session, event) -> None:
        """RTP taps are not used: forwards run inside the engine."""

    def re_answer(self, session, sdp: str) -> None:
        """The client's re-answer (any thread): applied in order with the channel's other media work."""
        self._worker.submit(lambda: self._apply_re_answer(session, sdp))

    def request_key_frame(self, session) -> int:
        """Ask a sending connection for a key frame on each of its tracks (RTCP PLI); returns how many."""
        with self._lock:
            sender = self._senders.get(session.connection_id)
            tracks = list(sender.tracks.items()) if sender is not None else []
            if sender is not None:
                tracks += [("video", track_id) for track_id, _ in sender.layers.values()]
        return sum(1 for kind, track_id in tracks if _request_remote_key_frame(session, track_id, kind))

    def spotlight_focus(self, connection_id: str, focus: bool = True) -> bool:
        """Spotlight: put a sender first (`focus`) or last in every spotlight receiver's order;
        False if it is not a sender of this channel. Receivers get notifies and switch layers."""
        with self._lock:
            sender = self._senders.get(connection_id)
            if sender is None:
                return False
            sender.spotlight_rank = (0, -time.monotonic()) if focus else (3, time.monotonic())
        self._worker.submit(self._update_spotlight)
        return True

    def focused(self, connection_id: str) -> List[str]:
        """Spotlight: the senders a receiver has in focus now (tests)."""
        with self._lock:
            receiver = self._receivers.get(connection_id)
            if receiver is None or not receiver.session.spotlight:
                return []
            ranked = self._spotlight_ranked(receiver.session)
        return [s.session.connection_id for s in ranked[:_spotlight_number(receiver.session)]]

    def forwards(self, connection_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """The slots of the receivers (of `connection_id`, or all), as dicts: for tests and debugging."""
        with self._lock:
            receivers = [r for cid, r in self._receivers.items() if connection_id in (None, cid)]
            return [{"receiver": r.session.connection_id, "sender": s.sender_id, "kind": s.kind,
                     "codec": s.codec, "payload_type": s.payload_type, "ssrc": s.ssrc, "mline": s.mline,
                     "mid": s.mid, "state": s.state, "forwarding": s.forward is not None, "rid": s.rid}
                    for r in receivers for s in r.slots]

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until the media work queued so far is done (tests)."""
        return self._worker.run_and_wait(lambda: None, timeout)

    # ---- worker tasks ----
    def _sender(self, session) -> Sender:
        sender = self._senders.get(session.connection_id)
        if sender is None:
            sender = Sender(session)
            self._senders[session.connection_id] = sender
        return sender

    def _joined(self, session) -> None:
        with self._lock:
            others: List[Receiver] = []
            if sent_kinds(session):
                sender = self._sender(session)
                sender.joined = True
                self._join_seq += 1
                sender.join_seq = self._join_seq
                # A libwebrtc client announces its track ids and SSRCs in the answer.
                for kind, (label, ssrc) in sender_track_info(getattr(session, "answer_sdp", None)).items():
                    if label and kind not in sender.labels:
                        sender.labels[kind] = label
                    if ssrc is not None and sender.ssrcs.get(kind) is None:
                        sender.ssrcs[kind] = ssrc
                others = [r for r in self._receivers.values() if r.joined and r.session is not session]
            receiver = self._receivers.get(session.connection_id)
            if receiver is not None and received_kinds(session):
                receiver.joined = True
                settle_slots(receiver)
            else:
                receiver = None
        if receiver is not None:
            self._start_forwards(receiver, trigger="receiver")  # its first choices: its own request
            self._reconcile(receiver)
        for other in others:
            self._reconcile(other)
        self._update_spotlight()

    def _left(self, session) -> None:
        cid = session.connection_id
        with self._lock:
            receiver = self._receivers.pop(cid, None)
            sender = self._senders.pop(cid, None)
            affected = []
            if sender is not None:
                affected = [r for r in self._receivers.values()
                            if any(slot.sender_id == cid and slot.live for slot in r.slots)]
        if receiver is not None:
            for slot in receiver.slots:
                self._stop_forward(slot)
        for other in affected:
            for slot in other.slots:
                if slot.sender_id == cid:
                    self._stop_forward(slot)
            self._reconcile(other)
        if sender is not None:
            self._stop_meter(sender)
            self._update_spotlight()

    def _track(self, session, kind: str, track_id: int) -> None:
        if session._ending or kind not in [k for k, _ in sent_kinds(session)]:
            return
        if kind == "video" and session.simulcast and getattr(session, "encodings", None) \
                and self._layer_track(session, track_id):
            return
        # The client's SSRC for this track: from its answer (libwebrtc and our SDK announce
        # it), else from the server peer's statistics.
        ssrc = sender_track_info(getattr(session, "answer_sdp", None)).get(kind, (None, None))[1]
        for _ in range(10):
            if ssrc is not None or session._ending:
                break
            ssrc = _received_ssrcs(session).get(kind)
            if ssrc is None:
                time.sleep(0.02)
        cid = session.connection_id
        with self._lock:
            sender = self._sender(session)
            replaced = sender.tracks.get(kind) not in (None, track_id)
            sender.tracks[kind] = track_id
            if ssrc is not None:
                sender.ssrcs[kind] = ssrc
            receivers = list(self._receivers.values())
        for receiver in receivers:
            if replaced:
                for slot in receiver.slots:
                    if slot.sender_id == cid and slot.kind == kind:
                        self._stop_forward(slot)
            self._start_forwards(receiver)
        if kind == "audio":
            if replaced:
                self._stop_meter(sender)
            self._ensure_meters()
        self._reconcile_soon(session)

    def _layer_track(self, session, track_id: int) -> bool:
        """A video track of a simulcast sender: registered as the layer its rid names, and every
        receiver's slot re-evaluated. False if it carries no rid (then it is a plain stream)."""
        rid, ssrc = None, 0
        deadline = time.monotonic() + RID_WAIT
        while True:
            info = session._peer_call("track rid", lambda peer: peer.track_rid(track_id), None)
            if info is None:
                return True  # the peer is gone
            rid, ssrc = info
            if rid is not None or session._ending or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if rid is None:
            log.info("local Sora: a simulcast video track of %s has no rid: forwarded as one stream",
                     session.connection_id)
            return False
        with self._lock:
            sender = self._sender(session)
            sender.layers[rid] = (track_id, ssrc or None)
            sender.stale.discard(rid)
            sender.layer_packets[rid] = (0, time.monotonic())
            receivers = list(self._receivers.values())
        log.debug("local Sora: layer %s of %s is track %d (SSRC %s)", rid, session.connection_id, track_id, ssrc)
        for receiver in receivers:
            self._start_forwards(receiver)
        self._schedule_layer_poll(session.server.scheduler)
        self._reconcile_soon(session)
        return True

    def _schedule_layer_poll(self, scheduler) -> None:
        """Check every LAYER_POLL s which layers of the simulcast senders arrive (while there are any)."""
        with self._lock:
            if self._layer_poll or scheduler is None:
                return
            self._layer_poll = True

        def run() -> None:
            with self._lock:
                self._layer_poll = False
            if self._poll_layers():
                self._schedule_layer_poll(scheduler)

        scheduler.call_later(LAYER_POLL, lambda: self._worker.submit(run))

    def _poll_layers(self) -> bool:
        """Mark the layers without new packets for LAYER_TIMEOUT s stale (and fresh ones live again);
        slots follow. Returns whether there still are simulcast senders."""
        with self._lock:
            senders = [s for s in self._senders.values() if s.layers and not s.session._ending]
        changed = False
        now = time.monotonic()
        for sender in senders:
            counts = _received_packets(sender.session)
            with self._lock:
                for rid, (_track_id, ssrc) in sender.layers.items():
                    count = counts.get(ssrc) if ssrc is not None else None
                    if count is None:
                        continue
                    before, since = sender.layer_packets.get(rid, (0, now))
                    if count > before:
                        sender.layer_packets[rid] = (count, now)
                        since = now
                    stale = now - since > LAYER_TIMEOUT
                    if stale != (rid in sender.stale):
                        changed = True
                        (sender.stale.add if stale else sender.stale.discard)(rid)
                        log.debug("local Sora: layer %s of %s %s", rid, sender.session.connection_id,
                                  "stopped" if stale else "arrives again")
        if changed:
            with self._lock:
                receivers = [r for r in self._receivers.values() if r.joined]
            for receiver in receivers:
                self._start_forwards(receiver)
        return bool(senders)

    # ---- spotlight ----
    def _spotlight_ranked(self, session) -> List[Sender]:
        """(lock held) The senders of the channel in `session`'s spotlight order: focused first."""
        candidates = [s for s in self._senders.values()
                      if s.joined and s.session is not session and not s.session._ending
                      and "video" in [k for k, _ in sent_kinds(s.session)]]
        return sorted(candidates, key=Sender.spotlight_key)

    def _update_spotlight(self) -> None:
        """Notify each spotlight receiver whose focus set changed and switch its layers."""
        self._ensure_meters()
        with self._lock:
            receivers = [r for r in self._receivers.values()
                         if r.joined and r.session.spotlight and not r.session._ending]
            changes = []
            for receiver in receivers:
                ranked = self._spotlight_ranked(receiver.session)
                focused = ranked[:_spotlight_number(receiver.session)]
                now = {s.session.connection_id for s in focused}
                gained = [s for s in focused if s.session.connection_id not in receiver.focused]
                lost = [s for s in ranked[len(focused):] if s.session.connection_id in receiver.focused]
                receiver.focused = now
                changes.append((receiver, gained, lost))
        for receiver, gained, lost in changes:
            for sender in lost:
                receiver.session.send_notify(_spotlight_notify("spotlight.unfocused", receiver.session, sender))
            for sender in gained:
                receiver.session.send_notify(_spotlight_notify("spotlight.focused", receiver.session, sender))
            if gained or lost:
                self._start_forwards(receiver)

    def _ensure_meters(self) -> None:
        """While the channel has spotlight receivers, decode each sender's audio for the speaker detection."""
        with self._lock:
            if not any(r.session.spotlight for r in self._receivers.values()):
                return
            todo = [s for s in self._senders.values()
                    if s.meter is None and "audio" in s.tracks and not s.session._ending]
        for sender in todo:
            track_id = sender.tracks["audio"]
            sender.meter = sender.session._peer_call(
                "audio meter", lambda peer, s=sender: EngineSink(
                    peer._context, peer, track_id, lib.SORA_SINK_AUDIO_S16,
                    lambda event, s=s: self._on_level(s, event), capacity=10, sample_rate=16000, channels=1))

    def _on_level(self, sender: Sender, event) -> None:
        """A meter's sink thread: one decoded audio buffer of `sender`."""
        try:
            samples = np.frombuffer(ffi.buffer(event.ptr, event.size), dtype=np.int16).astype(np.float32)
            rms = float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0
        finally:
            lib.sora_c_release(event.ref)
        if rms < SPEECH_RMS:
            sender.voice_run = 0
            return
        sender.voice_run += 1
        if sender.voice_run < SPEECH_RUN:
            return
        now = time.monotonic()
        started = now - sender.last_voice > SILENCE_GAP
        sender.last_voice = now
        if started:
            sender.speech_start = now
            self._worker.submit(self._update_spotlight)

    @staticmethod
    def _stop_meter(sender: Sender) -> None:
        meter, sender.meter = sender.meter, None
        if meter is not None:
            meter.close()

    def _requested_rid(self, session, sender: Sender) -> str:
        """(lock held) The layer `session` asks for of `sender`'s video, "none" for none (module docstring)."""
        if session.spotlight:
            ranked = self._spotlight_ranked(session)
            focused = sender in ranked[:_spotlight_number(session)]
            if focused:
                return session.spotlight_focus_rid or DEFAULT_SPOTLIGHT_FOCUS_RID
            return session.spotlight_unfocus_rid or DEFAULT_SPOTLIGHT_UNFOCUS_RID
        return (getattr(session, "simulcast_request_rid", None) or getattr(session, "simulcast_rid", None)
                or DEFAULT_SIMULCAST_RID)

    def _wanted_rid(self, session, sender: Sender) -> Optional[str]:
        """(lock held) The layer `session` should get of `sender`'s video; None: none ("none")."""
        rid = self._requested_rid(session, sender)
        return None if rid == "none" else rid

    def _slot_source(self, session, sender: Sender, kind: str) -> Optional[Tuple[int, Optional[str], Optional[int]]]:
        """(lock held) (engine track id, rid, SSRC) the slot of `session` for `sender`'s `kind` should forward now."""
        if kind != "video" or not sender.layers:
            track_id = sender.tracks.get(kind)
            return None if track_id is None else (track_id, None, sender.ssrcs.get(kind))
        wanted = self._wanted_rid(session, sender)
        if wanted is None:
            return None
        rid = pick_layer(sender.rid_order(), sender.live_layers(), wanted)
        if rid is None:
            return None
        track_id, ssrc = sender.layers[rid]
        return track_id, rid, ssrc

    def _reconcile_soon(self, session) -> None:
        """Reconcile every receiver shortly: a sender's audio and video arrive a few ms apart
        and should go in one re-offer."""
        with self._lock:
            if self._settle_pending:
                return
            self._settle_pending = True

        def run() -> None:
            with self._lock:
                self._settle_pending = False
                receivers = [r for r in self._receivers.values() if r.joined]
            for receiver in receivers:
                self._reconcile(receiver)

        scheduler = session.server.scheduler
        if scheduler is None:
            self._worker.submit(run)
        else:
            scheduler.call_later(TRACK_SETTLE, lambda: self._worker.submit(run))

    def _apply_re_answer(self, session, sdp: str) -> None:
        with self._lock:
            receiver = self._receivers.get(session.connection_id)
        sdp = session.applicable_answer(sdp)
        if sdp is None:
            return
        ok = session._peer_call("re-answer", lambda peer: peer.set_remote_description("answer", sdp) or True,
                                False)
        if receiver is None:
            return
        if not ok:
            log.warning("local Sora: the re-answer of %s was not applied", session.connection_id)
        with self._lock:
            receiver.negotiating = False
            if ok:
                settle_slots(receiver)
        if ok:
            for slot in receiver.slots:
                if slot.state == "rejected":
                    self._stop_forward(slot)
            self._start_forwards(receiver)
        if receiver.dirty or not ok:
            receiver.dirty = False
            self._reconcile(receiver, force=not ok and not session._ending)

    def _re_offer_expired(self, receiver: Receiver, generation: int) -> None:
        if receiver.negotiating and receiver.generation == generation and not receiver.session._ending:
            log.warning("local Sora: no re-answer from %s in %.0f s", receiver.session.connection_id,
                        REOFFER_TIMEOUT)
            receiver.negotiating = False
            if receiver.dirty:
                receiver.dirty = False
                self._reconcile(receiver)

    # ---- helpers (worker thread, or the receiver's session thread before its offer) ----
    def _add_slot(self, receiver: Receiver, peer, sender: Sender, kind: str, codec: str) -> Optional[Slot]:
        index = receiver.own_count + len(receiver.slots)
        ssrc = sender.ssrcs.get(kind)
        if kind == "video" and sender.layers:
            # The SSRC announced is that of the layer forwarded first (see _start_forwards).
            with self._lock:
                source = self._slot_source(receiver.session, sender, kind)
                if source is None:
                    source = (0, None, sender.layers[sender.live_layers()[0]][1])
            ssrc = source[2]
        slot = Slot(sender.session.connection_id, kind, codec, index, sender.track_label(kind), ssrc)
        try:
            peer.add_transceiver(kind, "sendonly", slot.caps)
        except Exception as exc:
            log.warning("local Sora: cannot add a %s slot for %s: %s", kind, receiver.session.connection_id, exc)
            return None
        with self._lock:
            receiver.slots.append(slot)
        return slot

    def _reconcile(self, receiver: Receiver, force: bool = False) -> None:
        """Bring a joined receiver's slots in line with the channel's senders; re-offer if they changed."""
        session = receiver.session
        if not receiver.joined or session._ending:
            return
        if receiver.negotiating:
            receiver.dirty = True
            return
        wanted = received_kinds(session)
        with self._lock:
            desired = {}
            for sender in self._senders.values():
                if sender.joined and sender.session is not session and not sender.session._ending:
                    for kind, codec in sender.ready_kinds():
                        if kind in wanted and forwarded(session, sender.session, kind):
                            desired[(sender.session.connection_id, kind)] = (sender, codec)
            live = {(slot.sender_id, slot.kind): slot for slot in receiver.slots if slot.live}
        changed = force
        for key, slot in live.items():
            if key not in desired:
                self._stop_forward(slot)
                if slot.mline is not None:
                    session._peer_call("set inactive", lambda peer, m=slot.mline: peer.set_direction(m, "inactive"))
                slot.state = "stopped"
                changed = True
        for key, (sender, codec) in desired.items():
            if key in live:
                continue
            added = session._peer_call("add slot", lambda peer, s=sender, k=key[1], c=codec:
                                       self._add_slot(receiver, peer, s, k, c))
            if added is not None:
                changed = True
        if changed:
            self._re_offer(receiver)

    def _re_offer(self, receiver: Receiver) -> None:
        session = receiver.session
        sdp = session._peer_call("re-offer", lambda peer: peer.create_offer())
        if not sdp:
            log.warning("local Sora: cannot create a re-offer for %s", session.connection_id)
            return
        try:
            checked_offer(session, sdp)
        except RuntimeError as exc:
            from .session import CLOSE_INTERNAL  # (session imports this module)
            log.error("local Sora: the re-offer for %s is invalid: %s", session.connection_id, exc)
            session.terminate(CLOSE_INTERNAL, "INTERNAL-ERROR")
            return
        # (b=AS again: a description without it lifts a libwebrtc sender's limit)
        sdp = bandwidth_offer(session, placeholder_offer(session, self._decorate(receiver, sdp)))
        sdp = offer_codecs(session, sdp)
        receiver.negotiating = True
        receiver.generation += 1
        receiver.re_offers += 1
        generation = receiver.generation
        if not session._send_signaling("signaling", {"type": "re-offer", "sdp": sdp}):
            log.debug("local Sora: re-offer to %s not sent", session.connection_id)
            receiver.negotiating = False
            return
        scheduler = session.server.scheduler
        if scheduler is not None:
            scheduler.call_later(REOFFER_TIMEOUT, lambda: self._worker.submit(
                lambda: self._re_offer_expired(receiver, generation)))

    def _decorate(self, receiver: Receiver, sdp: str) -> str:
        head, sections = split_sections(sdp)
        media_index = -1
        by_index = {slot.index: slot for slot in receiver.slots}
        for mline, section in enumerate(sections):
            if section_kind(section) not in ("audio", "video"):
                continue
            media_index += 1
            slot = by_index.get(media_index)
            if slot is None:
                continue
            slot.mline = mline
            slot.mid = section_attr(section, "mid")
            kept = [line for line in section
                    if not line.startswith(("a=msid:", "a=ssrc:", "a=ssrc-group:"))]
            if slot.live:
                extra = ["a=msid:%s %s" % (slot.sender_id, slot.track_label)]
                if slot.ssrc is not None:
                    extra.append("a=ssrc:%d cname:%s" % (slot.ssrc, slot.sender_id))
                    extra.append("a=ssrc:%d msid:%s %s" % (slot.ssrc, slot.sender_id, slot.track_label))
                at = next((i + 1 for i, line in enumerate(kept) if line.startswith("a=mid:")), len(kept))
                kept[at:at] = extra
            section[:] = kept
        return join_sections(head, sections)

    def _start_forwards(self, receiver: Receiver, trigger: str = "sender") -> None:
        """Start (or switch) the forward of each negotiated slot to what it should carry now: the
        sender's track, or for a simulcast sender the layer the receiver gets (see _slot_source);
        a changed layer is notified (simulcast.switched, `trigger`: see the module docstring)."""
        dst = receiver.session
        announce = False
        for slot in list(receiver.slots):
            if slot.state != "active" or slot.mline is None:
                continue
            with self._lock:
                sender = self._senders.get(slot.sender_id)
            if sender is None or sender.session._ending or dst._ending:
                continue
            announce = self._start_slot(dst, slot, sender) or announce
            if slot.kind == "video" and sender.layers:
                self._notify_switched(dst, slot, sender, trigger)
        if announce:
            self._reconcile(receiver, force=True)

    def _start_slot(self, dst, slot: Slot, sender: Sender) -> bool:
        """Bring one slot's forward in line; True if the slot's SSRC must be announced anew."""
        with self._lock:
            source = self._slot_source(dst, sender, slot.kind)
            first = sender.layer_with_ssrc(slot.ssrc) if not slot.started else None
        if source is None:
            if slot.forward is not None and sender.layers:
                self._stop_forward(slot)  # spotlight "none"
            return False
        track_id, rid, ssrc = source
        if slot.forward is not None and slot.source == track_id:
            return False
        announce = False
        if not slot.started and rid is not None and ssrc != slot.ssrc:
            # The m-line's first forward fixes the SSRC the receiver sees: the one announced.
            if first is not None:
                self._forward_slot(dst, slot, sender, *first)
            elif ssrc is not None:
                slot.ssrc = ssrc
                announce = True
        self._forward_slot(dst, slot, sender, track_id, rid)
        return announce

    def _notify_switched(self, dst, slot: Slot, sender: Sender, trigger: str) -> None:
        """Send `dst` simulcast.switched if the layer its slot forwards of `sender` changed."""
        current = slot.rid if slot.forward is not None and slot.rid else "none"
        if current == slot.notified:
            return
        previous, slot.notified = slot.notified, current
        from .channel import timestamp  # (channel imports this module)

        with self._lock:
            requested = self._requested_rid(dst, sender)
            auto = [rid for rid in sender.rid_order() if rid in sender.layers and rid not in sender.stale]
        dst.send_notify({"type": "notify", "event_type": "simulcast.switched", "timestamp": timestamp(),
                         "sender_connection_id": sender.session.connection_id, "priority": "lower",
                         "trigger": trigger, "rpc_rids": [], "auto_rids": auto, "request_rid": requested,
                         "current_rid": current, "previous_rid": previous})

    def _forward_slot(self, dst, slot: Slot, sender: Sender, track_id: int, rid: Optional[str]) -> None:
        switching = slot.forward is not None
        self._stop_forward(slot)
        forward = _forward(sender.session, track_id, dst, slot.mline, slot.payload_type)
        if forward is None:
            return
        slot.forward = forward
        slot.source = track_id
        slot.rid = rid
        slot.started = True
        log.debug("local Sora: %s %s %s%s of %s to %s (m-line %d)", "switching" if switching else "forwarding",
                  slot.kind, slot.codec, " " + rid if rid else "", slot.sender_id, dst.connection_id, slot.mline)

    @staticmethod
    def _stop_forward(slot: Slot) -> None:
        forward, slot.forward = slot.forward, None
        if forward is not None:
            try:
                forward.close()
            except Exception as exc:
                log.debug("local Sora: stopping a forward failed: %s", exc)


def _received_packets(session) -> Dict[int, int]:
    """SSRC -> packets received, of what a server peer receives (its inbound-rtp stats)."""
    stats = session._peer_call("stats", lambda peer: peer.get_stats(), None) or []
    out: Dict[int, int] = {}
    for entry in stats:
        if isinstance(entry, dict) and entry.get("type") == "inbound-rtp" and isinstance(entry.get("ssrc"), int):
            packets = entry.get("packets-received")
            out[entry["ssrc"]] = packets if isinstance(packets, int) else 0
    return out


def _spotlight_number(session) -> int:
    return getattr(session, "spotlight_number", None) or DEFAULT_SPOTLIGHT_NUMBER


def _spotlight_notify(event_type: str, receiver_session, sender: Sender) -> Dict[str, Any]:
    from .channel import timestamp  # (channel imports this module)

    src = sender.session
    return {"type": "notify", "event_type": event_type, "channel_id": receiver_session.channel_id,
            "connection_id": src.connection_id, "client_id": src.client_id, "audio": src.audio, "video": src.video,
            "fixed": bool(sender.spotlight_rank and sender.spotlight_rank[0] == 0), "timestamp": timestamp()}


def _forward(src_session, track_id: int, dst_session, mline: int, payload_type: int) -> Optional[Forward]:
    """A Forward between two sessions' server peers, holding both peer locks (so neither is freed meanwhile)."""
    with src_session._peer_lock:
        src = src_session._peer
        if src is None or src.closed:
            return None
        with dst_session._peer_lock:
            dst = dst_session._peer
            if dst is None or dst.closed:
                return None
            try:
                return Forward(src, track_id, dst, mline, payload_type)
            except Exception as exc:
                log.warning("local Sora: cannot forward track %d of %s to %s: %s", track_id,
                            src_session.connection_id, dst_session.connection_id, exc)
                return None
