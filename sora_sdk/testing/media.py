"""Media forwarding of the local Sora server: the SFU part of a channel (multistream).

Every sending connection (role sendonly/sendrecv) has its media received by its
server peer (recvonly transceivers, see Session._build_offer). Every receiving
connection (recvonly/sendrecv) gets, on its own server peer, one sendonly
transceiver per kind (audio, video) per sender of the channel -- a *slot* --
and the sender's RTP is re-sent on it unchanged by a `peer.Forward` (payload
type and SSRC kept, key-frame requests passed back to the sender).

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

All negotiation and forward work of one channel runs on one worker thread (the
`_Serial` executor), so slots, peers and forwards are changed in one order.
"""
from __future__ import annotations

import collections
import logging
import re
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..peer import Forward
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
    """The client's answer as applied to its server peer (placeholders need no change)."""
    return sdp


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
    forwarding once the sender's track is there), ``stopped`` (the sender left:
    set inactive, waiting for the next offer), ``inactive`` (negotiated inactive).
    """

    __slots__ = ("sender_id", "kind", "codec", "caps", "payload_type", "track_label", "ssrc", "index",
                 "mline", "mid", "state", "forward")

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

    @property
    def live(self) -> bool:
        return self.state in ("offered", "active")

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


class Sender:
    def __init__(self, session) -> None:
        self.session = session
        self.tracks: Dict[str, int] = {}          # kind -> engine track id on the sender's server peer
        self.ssrcs: Dict[str, Optional[int]] = {}  # kind -> the client's SSRC for it
        self.labels: Dict[str, str] = {}          # kind -> track id announced to receivers (a=msid)
        self.joined = False

    def ready_kinds(self) -> List[Tuple[str, str]]:
        """(kind, codec) of the tracks receivers can be offered: their SSRC is known (from the
        client's answer) or their media already reached the server."""
        return [(k, c) for k, c in sent_kinds(self.session)
                if k in self.tracks or self.ssrcs.get(k) is not None]

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
            tracks = dict(sender.tracks) if sender is not None else {}
        return sum(1 for kind, track_id in tracks.items() if _request_remote_key_frame(session, track_id, kind))

    def forwards(self, connection_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """The slots of the receivers (of `connection_id`, or all), as dicts: for tests and debugging."""
        with self._lock:
            receivers = [r for cid, r in self._receivers.items() if connection_id in (None, cid)]
            return [{"receiver": r.session.connection_id, "sender": s.sender_id, "kind": s.kind,
                     "codec": s.codec, "payload_type": s.payload_type, "ssrc": s.ssrc, "mline": s.mline,
                     "mid": s.mid, "state": s.state, "forwarding": s.forward is not None}
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
                for slot in receiver.slots:
                    if slot.state == "offered":
                        slot.state = "active"
            else:
                receiver = None
        if receiver is not None:
            self._start_forwards(receiver)
            self._reconcile(receiver)
        for other in others:
            self._reconcile(other)

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

    def _track(self, session, kind: str, track_id: int) -> None:
        if session._ending or kind not in [k for k, _ in sent_kinds(session)]:
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
        self._reconcile_soon(session)

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
        sdp = placeholder_answer(session, sdp)
        ok = session._peer_call("re-answer", lambda peer: peer.set_remote_description("answer", sdp) or True,
                                False)
        if receiver is None:
            return
        if not ok:
            log.warning("local Sora: the re-answer of %s was not applied", session.connection_id)
        with self._lock:
            receiver.negotiating = False
            if ok:
                for slot in receiver.slots:
                    if slot.state == "offered":
                        slot.state = "active"
                    elif slot.state == "stopped":
                        slot.state = "inactive"
        if ok:
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
        slot = Slot(sender.session.connection_id, kind, codec, index, sender.track_label(kind),
                    sender.ssrcs.get(kind))
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
        sdp = placeholder_offer(session, self._decorate(receiver, sdp))
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

    def _start_forwards(self, receiver: Receiver) -> None:
        dst = receiver.session
        for slot in list(receiver.slots):
            if slot.state != "active" or slot.forward is not None or slot.mline is None:
                continue
            with self._lock:
                sender = self._senders.get(slot.sender_id)
                track_id = sender.tracks.get(slot.kind) if sender is not None else None
            if sender is None or track_id is None or sender.session._ending or dst._ending:
                continue
            forward = _forward(sender.session, track_id, dst, slot.mline, slot.payload_type)
            if forward is not None:
                slot.forward = forward
                log.debug("local Sora: forwarding %s %s of %s to %s (m-line %d)", slot.kind, slot.codec,
                          slot.sender_id, dst.connection_id, slot.mline)

    @staticmethod
    def _stop_forward(slot: Slot) -> None:
        forward, slot.forward = slot.forward, None
        if forward is not None:
            try:
                forward.close()
            except Exception as exc:
                log.debug("local Sora: stopping a forward failed: %s", exc)


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
