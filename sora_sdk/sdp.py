"""The little of SDP the SDK needs to read: m-lines, their mids, codecs and directions."""
from __future__ import annotations

from typing import Dict, List, Optional

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# Payloads that are not media codecs of their own.
AUXILIARY = ("RTX", "RED", "ULPFEC", "FLEXFEC-03", "CN", "TELEPHONE-EVENT")


class Codec:
    __slots__ = ("payload_type", "name", "clock_rate", "channels", "fmtp")

    def __init__(self, payload_type: int, name: str, clock_rate: int, channels: int) -> None:
        self.payload_type = payload_type
        self.name = name
        self.clock_rate = clock_rate
        self.channels = channels
        self.fmtp: Optional[str] = None

    def __repr__(self) -> str:
        return "Codec(%d %s/%d/%d)" % (self.payload_type, self.name, self.clock_rate, self.channels)


class MediaSection:
    """One m-line: `index` is its position, `kind` audio/video/application."""

    def __init__(self, index: int, kind: str, payload_types: List[int]) -> None:
        self.index = index
        self.kind = kind
        self.payload_types = payload_types
        self.mid: Optional[str] = None
        self.direction = "sendrecv"
        self.directions = 0  # how many direction attributes the section has (one at most is valid)
        self.port: Optional[int] = None
        self.codecs: Dict[int, Codec] = {}
        self.msid: Optional[str] = None
        self.rids: List[str] = []
        self.extmaps: Dict[str, int] = {}  # header-extension URI -> a=extmap id
        self.ssrcs: List[int] = []
        self.fid: Dict[int, int] = {}  # RTX SSRC -> the SSRC it repairs

    def media_codecs(self) -> List[Codec]:
        """Codecs in preference order, without RTX/RED/FEC entries."""
        out = []
        for pt in self.payload_types:
            codec = self.codecs.get(pt)
            if codec is not None and codec.name.upper() not in AUXILIARY:
                out.append(codec)
        return out

    @property
    def stream_id(self) -> Optional[str]:
        return self.msid.split()[0] if self.msid else None

    @property
    def track_id(self) -> Optional[str]:
        parts = self.msid.split() if self.msid else []
        return parts[1] if len(parts) > 1 else None


def _number(text: str) -> Optional[int]:
    """A decimal ASCII number, else None (str.isdigit() also accepts "²" and other digits int() refuses)."""
    return int(text) if 0 < len(text) <= 18 and text.isascii() and text.isdigit() else None


def parse(sdp: str) -> List[MediaSection]:
    """Parse the media sections of an SDP (lenient: unknown lines are skipped)."""
    sections: List[MediaSection] = []
    current: Optional[MediaSection] = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            fields = line[2:].split()
            pts = [n for n in (_number(f) for f in fields[3:]) if n is not None]
            current = MediaSection(len(sections), fields[0] if fields else "", pts)
            current.port = _number(fields[1].split("/")[0]) if len(fields) > 1 else None
            sections.append(current)
        elif current is None or not line.startswith("a="):
            continue
        else:
            attr = line[2:]
            name, _, value = attr.partition(":")
            if name in DIRECTIONS and not value:
                current.direction = name
                current.directions += 1
            elif name == "mid":
                current.mid = value
            elif name == "msid":
                current.msid = value
            elif name == "rid":
                if value.split():
                    current.rids.append(value.split()[0])
            elif name == "extmap":
                parts = value.split()
                ext_id = _number(parts[0].split("/")[0]) if parts else None
                if len(parts) >= 2 and ext_id is not None:
                    current.extmaps.setdefault(parts[1], ext_id)
            elif name == "ssrc":
                head = _number(value.split(" ", 1)[0])
                if head is not None and head not in current.ssrcs:
                    current.ssrcs.append(head)
            elif name == "ssrc-group":
                parts = value.split()
                if len(parts) == 3 and parts[0] == "FID" and _number(parts[1]) is not None \
                        and _number(parts[2]) is not None:
                    current.fid[int(parts[2])] = int(parts[1])
            elif name == "rtpmap":
                pt_text, _, enc = value.partition(" ")
                parts = enc.split("/")
                pt = _number(pt_text)
                if pt is not None and parts and parts[0]:
                    clock = (_number(parts[1]) if len(parts) > 1 else None) or 0
                    channels = (_number(parts[2]) if len(parts) > 2 else None) or 1
                    current.codecs[pt] = Codec(pt, parts[0], clock, channels)
            elif name == "fmtp":
                pt_text, _, params = value.partition(" ")
                pt = _number(pt_text)
                if pt is not None and pt in current.codecs:
                    current.codecs[pt].fmtp = params
    return sections


# RFC 3264 §6.1: the directions an answer may give an m-line that the offer marks so.
ANSWER_DIRECTIONS = {
    "sendrecv": ("sendrecv", "sendonly", "recvonly", "inactive"),
    "sendonly": ("recvonly", "inactive"),
    "recvonly": ("sendonly", "inactive"),
    "inactive": ("inactive",),
}


def direction_problem(offer: str, answer: Optional[str] = None) -> Optional[str]:
    """Why the audio/video m-lines of `offer` (and, given, of its `answer`) do not each have one direction
    that RFC 3264 allows, or None. A rejected answer m-line (port 0) is not checked. webrtcbin 1.26 reads an
    m-line with two direction attributes as one with none and aborts the process (g_assert_not_reached in
    _get_final_direction) when it applies an answer to it."""
    offered = parse(offer)
    for section in offered:
        if section.kind in ("audio", "video") and section.directions > 1:
            return "the offer's m-line %d has %d direction attributes" % (section.index, section.directions)
    if answer is None:
        return None
    answered = parse(answer)
    if len(answered) != len(offered):
        return "the answer has %d m-lines, the offer %d" % (len(answered), len(offered))
    for off, ans in zip(offered, answered):
        if ans.kind != off.kind:
            return "the answer's m-line %d is %s, the offer's %s" % (ans.index, ans.kind, off.kind)
        if ans.kind not in ("audio", "video") or ans.port == 0:
            continue
        if ans.directions > 1:
            return "the answer's m-line %d has %d direction attributes" % (ans.index, ans.directions)
        if ans.direction not in ANSWER_DIRECTIONS[off.direction]:
            return "the answer's m-line %d is %s, the offer's %s" % (ans.index, ans.direction, off.direction)
    return None


def mids(sdp: str) -> Dict[str, str]:
    """{"audio": mid, "video": mid} of the first audio and video sections."""
    out: Dict[str, str] = {}
    for section in parse(sdp):
        if section.kind in ("audio", "video") and section.kind not in out and section.mid is not None:
            out[section.kind] = section.mid
    return out


def ssrc_table(*sdps: Optional[str]) -> Dict[int, dict]:
    """{ssrc: {"kind", "mid", "codec", "rtx_of", "payload_type", "name", "clock_rate", "channels", "fmtp"}}
    from the a=ssrc / a=ssrc-group:FID lines of descriptions; the codec fields are those of the section's
    first media codec (None without one)."""
    table: Dict[int, dict] = {}
    for text in sdps:
        if not text:
            continue
        for section in parse(text):
            codecs = section.media_codecs()
            first = codecs[0] if codecs else None
            codec = first.name.upper() if first else None
            for ssrc in section.ssrcs:
                table[ssrc] = {"kind": section.kind, "mid": section.mid, "codec": codec,
                               "rtx_of": section.fid.get(ssrc),
                               "payload_type": first.payload_type if first else None,
                               "name": first.name if first else None,
                               "clock_rate": first.clock_rate if first else None,
                               "channels": first.channels if first else None,
                               "fmtp": first.fmtp if first else None}
    return table
