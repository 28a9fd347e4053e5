"""AV1 over RTP through the shim's own sorartpav1pay / sorartpav1depay (csrc/src/av1rtp.c).

* Packetization, checked on real libaom output against the AOMedia "RTP Payload Format For AV1"
  rules, with an independent parser written here: the shim's test hooks (not in the public
  header) run av1enc -> sorartpav1pay -> sorartpav1depay [-> av1dec] and hand back every
  encoded temporal unit, RTP packet and depayloaded temporal unit.
* Two raw peers over loopback: AV1 from BGR frames, decoded on the other side.
* SDK level: AV1 sendonly to the local Sora server, and through its SFU to a decoding receiver.

AV1 software encoding is slow: small sizes and low frame rates keep each test short.
"""
from __future__ import annotations

import ctypes
import json
import struct
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

import sora_sdk
from sora_sdk import _ffi
from sora_sdk._ffi import check, ffi, lib
from sora_sdk.context import Context
from sora_sdk.media.sink import EngineSink
from sora_sdk.peer import Peer
from tests.conftest import Recorder, connected_video_sender, wait_until

OBU_SEQUENCE_HEADER = 1
OBU_TEMPORAL_DELIMITER = 2
OBU_FRAME_HEADER = 3
OBU_FRAME = 6
OBU_TILE_LIST = 8
OBU_PADDING = 15
PT = 45
AV1_CAPS = "application/x-rtp,media=video,encoding-name=AV1,payload=%d,clock-rate=90000" % PT

# ---------------------------------------------------------------------------
# AV1 bitstream / RTP payload parsing (independent of the C implementation)
# ---------------------------------------------------------------------------


def leb128(data: bytes, pos: int) -> Tuple[int, int]:
    value = 0
    for i in range(8):
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("leb128 longer than 8 bytes")


def leb128_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class Obu:
    """One OBU: type, optional extension byte, payload; `sized` = obu_has_size_field."""

    def __init__(self, header: int, ext: Optional[int], payload: bytes, sized: bool) -> None:
        self.header, self.ext, self.payload, self.sized = header, ext, payload, sized

    @property
    def type(self) -> int:
        return (self.header >> 3) & 0xF

    def key(self) -> tuple:
        """What must survive RTP unchanged: header bits other than obu_has_size_field, extension, payload."""
        return (self.header & ~0x02, self.ext, self.payload)

    def element(self, sized: bool = False) -> bytes:
        head = bytes([(self.header & ~0x02) | (0x02 if sized else 0)]) + (bytes([self.ext]) if self.ext is not None else b"")
        return head + (leb128_bytes(len(self.payload)) if sized else b"") + self.payload


def parse_obus(data: bytes) -> List[Obu]:
    """A low-overhead bitstream; an OBU without obu_size runs to the end."""
    out, pos = [], 0
    while pos < len(data):
        header = data[pos]
        assert not header & 0x80, "obu_forbidden_bit set"
        pos += 1
        ext = None
        if header & 0x04:
            ext = data[pos]
            pos += 1
        sized = bool(header & 0x02)
        if sized:
            size, pos = leb128(data, pos)
        else:
            size = len(data) - pos
        assert pos + size <= len(data)
        out.append(Obu(header, ext, data[pos:pos + size], sized))
        pos += size
    return out


def is_key_tu(obus: Sequence[Obu]) -> bool:
    """A temporal unit with a sequence header whose first frame is a KEY_FRAME (no reduced still picture here)."""
    if not any(o.type == OBU_SEQUENCE_HEADER for o in obus):
        return False
    frame = next(o for o in obus if o.type in (OBU_FRAME, OBU_FRAME_HEADER))
    return not frame.payload[0] & 0x80 and (frame.payload[0] >> 5) & 3 == 0


class Packet:
    def __init__(self, raw: bytes) -> None:
        assert raw[0] >> 6 == 2, "RTP version"
        assert not raw[0] & 0x30, "no padding / extension expected"
        cc = raw[0] & 0x0F
        self.raw = raw
        self.marker = bool(raw[1] & 0x80)
        self.pt = raw[1] & 0x7F
        self.seq, self.ts, self.ssrc = struct.unpack_from("!HII", raw, 2)
        payload = raw[12 + 4 * cc:]
        agg = payload[0]
        self.z, self.y = bool(agg & 0x80), bool(agg & 0x40)
        self.w, self.n = (agg >> 4) & 3, bool(agg & 0x08)
        assert agg & 0x07 == 0, "reserved aggregation header bits"
        self.elements: List[bytes] = []
        pos = 1
        while pos < len(payload):
            if self.w == 0 or len(self.elements) < self.w - 1:
                size, pos = leb128(payload, pos)
            else:
                size = len(payload) - pos
            assert pos + size <= len(payload), "element runs past the payload"
            self.elements.append(payload[pos:pos + size])
            pos += size
        assert pos == len(payload)
        if self.w:
            assert len(self.elements) == self.w, (self.w, len(self.elements))


def reassemble(packets: Sequence[Packet]) -> List[List[bytes]]:
    """Temporal units (lists of OBU elements) from in-order packets, following Z/Y and the marker bit."""
    tus: List[List[bytes]] = []
    current: List[bytes] = []
    fragment: Optional[bytes] = None
    for p in packets:
        for i, element in enumerate(p.elements):
            if i == 0 and p.z:
                assert fragment is not None, "Z=1 without a fragment to continue"
                element = fragment + element
                fragment = None
            else:
                assert fragment is None, "fragment not continued"
            if i == len(p.elements) - 1 and p.y:
                fragment = element
            else:
                current.append(element)
        if p.marker:
            assert fragment is None, "marker inside a fragment"
            tus.append(current)
            current = []
    assert not current and fragment is None
    return tus


# ---------------------------------------------------------------------------
# The shim's test hooks (ctypes; not part of sora_c.h)
# ---------------------------------------------------------------------------

_hooks = ctypes.CDLL(_ffi.library_path())  # the same, already loaded, shim
_hooks.soratest_av1rtp_roundtrip.restype = ctypes.c_int
_hooks.soratest_av1rtp_roundtrip.argtypes = [
    ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
    ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int,
    ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
]  # fmt: skip
_hooks.soratest_av1rtp_depayload.restype = ctypes.c_int
_hooks.soratest_av1rtp_depayload.argtypes = [
    ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
]  # fmt: skip
_hooks.soratest_av1_decode.restype = ctypes.c_int
_hooks.soratest_av1_decode.argtypes = [
    ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
]  # fmt: skip
_hooks.sora_c_free.argtypes = [ctypes.c_void_p]
_hooks.sora_c_free.restype = None


def _records(rc: int, out: ctypes.c_void_p, size: ctypes.c_size_t) -> List[Tuple[str, bytes]]:
    if rc != 0:
        raise AssertionError("test hook failed: %s" % _ffi.last_error())
    try:
        blob = ctypes.string_at(out.value, size.value) if size.value else b""
    finally:
        _hooks.sora_c_free(out)
    records, pos = [], 0
    while pos < len(blob):
        kind = chr(blob[pos])
        (length,) = struct.unpack_from("<I", blob, pos + 1)
        records.append((kind, blob[pos + 5:pos + 5 + length]))
        pos += 5 + length
    assert pos == len(blob)
    return records


def roundtrip(pattern: str, width: int, height: int, frames: int, kbps: int, mtu: int, keyframe_max_dist: int = 3000,
              drop: Sequence[int] = (), decode: bool = True) -> List[Tuple[str, bytes]]:
    drops = (ctypes.c_int * max(1, len(drop)))(*drop)
    out, size = ctypes.c_void_p(), ctypes.c_size_t()
    rc = _hooks.soratest_av1rtp_roundtrip(pattern.encode(), width, height, frames, kbps, mtu, keyframe_max_dist,
                                           drops, len(drop), int(decode), ctypes.byref(out), ctypes.byref(size))
    return _records(rc, out, size)


def depayload(packets: Sequence[bytes], decode: bool = True) -> List[Tuple[str, bytes]]:
    blob = b"".join(struct.pack("<I", len(p)) + p for p in packets)
    out, size = ctypes.c_void_p(), ctypes.c_size_t()
    rc = _hooks.soratest_av1rtp_depayload(blob, len(blob), int(decode), ctypes.byref(out), ctypes.byref(size))
    return _records(rc, out, size)


def decode(tus: Sequence[bytes], decoder: Optional[str] = None) -> List[Tuple[str, bytes]]:
    """Temporal units straight into `decoder` (the engine's soradav1dec when None): its frames ('F') and its
    key-frame requests ('K')."""
    blob = b"".join(struct.pack("<I", len(t)) + t for t in tus)
    out, size = ctypes.c_void_p(), ctypes.c_size_t()
    rc = _hooks.soratest_av1_decode(blob, len(blob), decoder.encode() if decoder else None, ctypes.byref(out),
                                    ctypes.byref(size))
    return _records(rc, out, size)


def of(records, kind: str) -> List[bytes]:
    return [data for k, data in records if k == kind]


def decoded(records) -> List[Tuple[int, int, int]]:
    return [struct.unpack("<III", data) for data in of(records, "F")]


@pytest.fixture(scope="module")
def stream():
    """640x480 moving SMPTE bars, MTU 1200: key frames of several packets."""
    return roundtrip("smpte", 640, 480, 16, 800, 1200)


@pytest.fixture(scope="module")
def small_mtu_stream():
    """A small MTU: many fragments, and small OBUs aggregated with the next one."""
    return roundtrip("smpte", 320, 240, 12, 300, 120)


def _check_packetization(records, mtu: int) -> dict:
    encoded = of(records, "E")
    packets = [Packet(raw) for raw in of(records, "R")]
    assert encoded and packets
    stats = {"fragments": 0, "aggregated": 0, "key_tus": 0, "w0": 0}
    for p in packets:
        assert len(p.raw) <= mtu
        assert p.pt == PT
        assert p.ssrc == packets[0].ssrc
        stats["fragments"] += p.y
        stats["aggregated"] += len(p.elements) > 1
        stats["w0"] += p.w == 0
    # sequence numbers are consecutive
    for a, b in zip(packets, packets[1:]):
        assert b.seq == (a.seq + 1) & 0xFFFF
    # packets of one temporal unit: same timestamp, Z=0 first, marker only on the last
    groups: List[List[Packet]] = [[]]
    for p in packets:
        groups[-1].append(p)
        if p.marker:
            groups.append([])
    assert groups.pop() == []
    assert len(groups) == len(encoded)
    timestamps = []
    for group in groups:
        assert not group[0].z and not group[-1].y
        assert len({p.ts for p in group}) == 1
        timestamps.append(group[0].ts)
        for a, b in zip(group, group[1:]):
            assert a.y == b.z
        assert not any(p.n for p in group[1:])
    # 15 fps: 6000 ticks of the 90 kHz clock per temporal unit (+-1 from rounding 1/15 s in ns)
    assert all(abs(b - a - 6000) <= 1 for a, b in zip(timestamps, timestamps[1:])), timestamps
    tus = reassemble(packets)
    assert len(tus) == len(encoded)
    for tu_elements, group, enc in zip(tus, groups, encoded):
        sent = [parse_obus(e)[0] for e in tu_elements]
        for element, obu in zip(tu_elements, sent):
            assert len(parse_obus(element)) == 1  # one OBU per element
            assert not obu.sized  # obu_size stripped: the element length gives it
            assert obu.type not in (OBU_TEMPORAL_DELIMITER, OBU_TILE_LIST, OBU_PADDING)
        want = [o for o in parse_obus(enc) if o.type not in (OBU_TEMPORAL_DELIMITER, OBU_TILE_LIST, OBU_PADDING)]
        assert parse_obus(enc)[0].type == OBU_TEMPORAL_DELIMITER  # libaom sends one; it must not go out
        # fragments reassemble byte-exact
        assert [o.key() for o in sent] == [o.key() for o in want]
        assert group[0].n == is_key_tu(want)
        stats["key_tus"] += group[0].n
    return stats


def test_packetization_follows_the_payload_format(stream):
    stats = _check_packetization(stream, 1200)
    assert stats["key_tus"] == 1  # the first temporal unit only (no key frame requested)
    assert stats["fragments"] >= 2  # the key frame spans several packets


def test_small_mtu_fragments_and_aggregates(small_mtu_stream):
    stats = _check_packetization(small_mtu_stream, 120)
    assert stats["fragments"] > 10
    assert stats["aggregated"] >= 1  # the sequence header shares a packet with the frame's start


def test_depayloader_rebuilds_the_encoder_output(stream, small_mtu_stream):
    for records, size in ((stream, (640, 480)), (small_mtu_stream, (320, 240))):
        encoded, rebuilt = of(records, "E"), of(records, "D")
        assert len(rebuilt) == len(encoded)
        for enc, dep in zip(encoded, rebuilt):
            obus = parse_obus(dep)
            assert obus[0].type == OBU_TEMPORAL_DELIMITER and obus[0].payload == b""
            assert all(o.sized for o in obus)
            assert [o.key() for o in obus] == [o.key() for o in parse_obus(enc)]
            assert dep == enc  # libaom writes minimal leb128 sizes too, so the bytes match exactly
        frames = decoded(records)
        assert len(frames) == len(encoded)
        assert all((w, h) == size for w, h, _ in frames)
        assert all(mean > 40 for _, _, mean in frames)  # bars, not a black or broken picture


def test_packet_loss_drops_until_a_key_frame_and_requests_one():
    frames = 30
    # the encoder is deterministic (one thread, same input): a clean run gives the packet indexes
    clean = [Packet(raw) for raw in of(roundtrip("smpte", 320, 240, frames, 300, 400, decode=False), "R")]
    starts = [0] + [i + 1 for i, p in enumerate(clean[:-1]) if p.marker]  # first packet of each temporal unit
    assert starts[10] - starts[9] >= 3
    victim = starts[9] + 1  # a middle packet of the 10th temporal unit
    records = roundtrip("smpte", 320, 240, frames, 300, 400, drop=[victim])
    kinds = "".join(k for k, _ in records)
    assert "X" in kinds and "K" in kinds
    assert kinds.index("K") > kinds.index("X")  # the depayloader asked for a key frame after the loss
    encoded = of(records, "E")
    key_at = [i for i, enc in enumerate(encoded) if is_key_tu(parse_obus(enc))]
    # the request made the very next frame a key frame (av1enc 1.22 needs the shim's workaround for that)
    assert key_at[:2] == [0, 10], key_at
    rebuilt = of(records, "D")
    # the broken unit never comes out, decoding resumes at the key frame, everything output is intact
    assert rebuilt == encoded[:9] + encoded[10:]
    assert len(decoded(records)) == len(rebuilt)


def _repacketize(encoded: Sequence[bytes], max_payload: int, keep_size: bool) -> List[bytes]:
    """Another valid packetization: W=0 (every element length-prefixed), the temporal delimiter and a padding
    OBU sent along (receivers must ignore them), obu_has_size_field kept, N left unset."""
    packets, seq = [], 1000
    for frame, tu in enumerate(encoded):
        obus = parse_obus(tu) + [Obu(OBU_PADDING << 3, None, b"\0\0\0", False)]
        stream = [o.element(sized=keep_size) for o in obus]
        payloads: List[Tuple[bool, bool, List[bytes]]] = []  # (z, y, elements)
        z, elements, room = False, [], max_payload - 1
        for element in stream:
            while element:
                take = min(len(element), room - len(leb128_bytes(room)))
                if take <= 0:
                    payloads.append((z, False, elements))
                    z, elements, room = False, [], max_payload - 1
                    continue
                elements.append(element[:take])
                room -= take + len(leb128_bytes(take))
                element = element[take:]
                if element:
                    payloads.append((z, True, elements))
                    z, elements, room = True, [], max_payload - 1
        if elements:
            payloads.append((z, False, elements))
        for i, (pz, py, els) in enumerate(payloads):
            header = struct.pack("!BBHII", 0x80, (0x80 if i == len(payloads) - 1 else 0) | PT, seq & 0xFFFF,
                                 frame * 3000, 0x1234)
            agg = (0x80 if pz else 0) | (0x40 if py else 0)  # W = 0, N = 0
            packets.append(header + bytes([agg]) + b"".join(leb128_bytes(len(e)) + e for e in els))
            seq += 1
    return packets


@pytest.mark.parametrize("keep_size", [False, True])
def test_depayloader_accepts_other_valid_packetizations(stream, keep_size):
    encoded = of(stream, "E")
    records = depayload(_repacketize(encoded, 500, keep_size))
    assert of(records, "D") == encoded
    assert len(decoded(records)) == len(encoded)
    assert "K" not in "".join(k for k, _ in records)


def test_depayloader_waits_for_a_sequence_start(stream):
    encoded = of(stream, "E")
    packets = _repacketize(encoded, 500, False)
    first_tu = [p for p in packets if struct.unpack_from("!I", p, 4)[0] == 0]
    # join mid-stream: the first temporal unit (the key frame) is missing
    records = depayload(packets[len(first_tu):])
    assert of(records, "D") == []
    assert "K" in "".join(k for k, _ in records)
    # a lost middle fragment of the key frame: nothing until the next key frame (none here)
    records = depayload(packets[:1] + packets[2:])
    assert of(records, "D") == []
    assert "K" in "".join(k for k, _ in records)


# ---------------------------------------------------------------------------
# The codec elements: soraav1enc (csrc/src/aomenc.c, libaom with libwebrtc's settings), what the send path
# encodes with, and soradav1dec (csrc/src/dav1ddec.c, dav1d), what the receive path's decodebin picks
# ---------------------------------------------------------------------------


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def get(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value


def _sequence_tools(payload: bytes) -> Dict[str, int]:
    """The coding-tool flags of a sequence header OBU (AV1 spec 5.5.1; no reduced still picture, no timing
    info, as a real-time libaom writes it)."""
    r = _BitReader(payload)
    profile, still, reduced = r.get(3), r.get(1), r.get(1)
    assert (still, reduced) == (0, 0) and r.get(1) == 0  # timing_info_present_flag
    initial_display_delay = r.get(1)
    for _ in range(r.get(5) + 1):  # operating points
        r.get(12)
        if r.get(5) > 7:
            r.get(1)
        if initial_display_delay and r.get(1):
            r.get(4)
    width_bits, height_bits = r.get(4) + 1, r.get(4) + 1
    tools = {"profile": profile, "width": r.get(width_bits) + 1, "height": r.get(height_bits) + 1}
    if r.get(1):  # frame_id_numbers_present_flag
        r.get(7)
    for name in ("use_128x128_superblock", "filter_intra", "intra_edge_filter", "interintra_compound",
                 "masked_compound", "warped_motion", "dual_filter", "order_hint"):
        tools[name] = r.get(1)
    if tools["order_hint"]:
        tools["jnt_comp"], tools["ref_frame_mvs"] = r.get(1), r.get(1)
    if r.get(1):  # seq_choose_screen_content_tools
        screen = 2
    else:
        screen = r.get(1)
    if screen > 0 and not r.get(1):  # seq_choose_integer_mv
        r.get(1)
    if tools["order_hint"]:
        r.get(3)
    tools["superres"], tools["cdef"], tools["restoration"] = r.get(1), r.get(1), r.get(1)
    return tools


def test_encoder_uses_the_real_time_tools_of_libwebrtc(stream):
    """soraav1enc sets libaom up as libwebrtc's LibaomAv1Encoder does; the sequence header shows the tools it
    turned off (GStreamer's av1enc leaves them all on)."""
    key = of(stream, "E")[0]
    seq = next(o for o in parse_obus(key) if o.type == OBU_SEQUENCE_HEADER)
    tools = _sequence_tools(seq.payload)
    assert (tools["profile"], tools["width"], tools["height"]) == (0, 640, 480), tools
    off = ("filter_intra", "intra_edge_filter", "interintra_compound", "masked_compound", "warped_motion",
           "dual_filter", "order_hint", "restoration", "superres")
    assert {name: tools[name] for name in off} == dict.fromkeys(off, 0), tools
    assert tools["cdef"] == 1, tools


def test_encoder_follows_the_target_bitrate():
    """Constant bitrate: ten times the target gives several times the bytes, each near its target (2.9 s at
    15 fps after the key frame)."""
    sizes = {}
    for kbps in (60, 600):
        units = of(roundtrip("smpte", 320, 240, 45, kbps, 1200, decode=False), "E")
        assert len(units) == 45
        sizes[kbps] = sum(map(len, units[1:])) * 8 / (44 / 15) / 1000
    assert sizes[600] > 4 * sizes[60], sizes
    assert 30 < sizes[60] < 120 and 300 < sizes[600] < 1200, sizes


def test_receive_path_decoder_is_dav1d():
    assert lib.sora_c_element_available(b"soradav1dec") == 1
    factory = ctypes.CDLL(_ffi.library_path())  # GStreamer is in the process: ask it for the ranks
    factory.gst_element_factory_find.restype = ctypes.c_void_p
    factory.gst_element_factory_find.argtypes = [ctypes.c_char_p]
    factory.gst_plugin_feature_get_rank.restype = ctypes.c_uint
    factory.gst_plugin_feature_get_rank.argtypes = [ctypes.c_void_p]
    factory.gst_object_unref.argtypes = [ctypes.c_void_p]
    ranks = {}
    for name in (b"soradav1dec", b"av1dec"):
        found = factory.gst_element_factory_find(name)
        if found:
            ranks[name] = factory.gst_plugin_feature_get_rank(found)
            factory.gst_object_unref(found)
    assert ranks[b"soradav1dec"] > ranks.get(b"av1dec", 0), ranks


def test_dav1d_output_matches_libaom(stream):
    """dav1d and libaom are both conformant decoders: the same pictures, frame for frame."""
    tus = of(stream, "E")
    ours = decoded(decode(tus))
    assert len(ours) == len(tus) and {(w, h) for w, h, _ in ours} == {(640, 480)}
    assert ours == decoded(decode(tus, "av1dec"))
    assert decoded(stream) == ours  # the roundtrip hook decodes with soradav1dec too


def test_dav1d_follows_size_changes(stream):
    small = of(roundtrip("ball", 320, 240, 6, 200, 1200, decode=False), "E")
    big = of(stream, "E")
    records = decode(small + big + small)
    sizes = [(w, h) for w, h, _ in decoded(records)]
    assert sizes == [(320, 240)] * len(small) + [(640, 480)] * len(big) + [(320, 240)] * len(small), sizes
    assert "K" not in "".join(k for k, _ in records)


class _Bits:
    def __init__(self) -> None:
        self.bits: List[int] = []

    def put(self, value: int, n: int) -> "_Bits":
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]
        return self

    def obu(self, obu_type: int) -> bytes:
        """As an OBU with obu_size, after trailing bits (a one, then zeros to the byte)."""
        bits = self.bits + [1]
        bits += [0] * (-len(bits) % 8)
        payload = bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))
        return bytes([(obu_type << 3) | 0x02]) + leb128_bytes(len(payload)) + payload


def _huge_still_picture() -> bytes:
    """A reduced still-picture sequence header of 65536 x 65536 (AV1's largest) and a frame of it: 6 GB of
    pixels, which the decoder must refuse rather than allocate."""
    seq = _Bits().put(0, 3).put(1, 1).put(1, 1)  # seq_profile 0, still_picture, reduced_still_picture_header
    seq.put(31, 5)  # seq_level_idx[0]
    seq.put(15, 4).put(15, 4).put(65535, 16).put(65535, 16)  # 16-bit sizes, max_frame_{width,height}_minus_1
    seq.put(0, 3)  # use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
    seq.put(0, 3)  # enable_superres, enable_cdef, enable_restoration
    seq.put(0, 4).put(0, 2).put(0, 1)  # 8-bit, colour, no description, range; chroma position; uv delta q
    seq.put(0, 1)  # film_grain_params_present
    frame = bytes([(OBU_FRAME << 3) | 0x02]) + leb128_bytes(64) + bytes(64)
    return bytes([(OBU_TEMPORAL_DELIMITER << 3) | 0x02, 0]) + seq.obu(OBU_SEQUENCE_HEADER) + frame


def test_dav1d_survives_corrupt_input(stream):
    """Garbage, truncated and bit-flipped temporal units, impossible OBU sizes and a 65536 x 65536 frame: no
    crash, no pipeline error, no huge allocation; the decoder asks for a key frame and decodes the next one."""
    import random
    import resource

    tus = of(stream, "E")
    key = tus[0]
    assert is_key_tu(parse_obus(key))
    rng = random.Random(14)
    flipped = bytearray(key)
    for pos in rng.sample(range(len(key) // 4, len(key)), 40):
        flipped[pos] ^= 1 << rng.randrange(8)
    garbage = [
        b"",
        bytes(rng.randrange(256) for _ in range(3000)),
        key[: len(key) // 2],
        bytes(flipped),
        bytes([(OBU_FRAME << 3) | 0x02]) + leb128_bytes(1 << 50) + bytes(8),  # obu_size far past the end
        bytes([0x80 | (OBU_FRAME << 3)]) + bytes(32),  # obu_forbidden_bit
        _huge_still_picture(),
        tus[3], tus[4],  # delta frames with no reference after the errors
    ]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # garbage first (before any sequence header), then the stream, garbage, the stream again
    records = decode(garbage + tus[:6] + garbage + tus[:6])
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kib < 512 * 1024, grown_kib
    kinds = "".join(k for k, _ in records)
    assert kinds.count("K") >= 2, kinds  # a key-frame request after each burst of errors
    frames = decoded(records)
    clean = decoded(decode(tus[:6]))
    assert len(clean) == 6
    assert frames[-6:] == clean  # decoding is intact again from the key frame on
    assert len(frames) <= 6 + len(garbage) + 6


# ---------------------------------------------------------------------------
# Two raw peers over loopback
# ---------------------------------------------------------------------------

LEFT, RIGHT = (40, 160, 220), (200, 60, 30)
TOLERANCE = 16


def _picture(width: int, height: int) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:, : width // 2] = LEFT
    frame[:, width // 2:] = RIGHT
    return frame


class Loopback:
    """Peer `a` receives (recvonly, decoding sink), peer `b` sends AV1 from a video source."""

    def __init__(self) -> None:
        self.ctx = Context()
        self.frames: List[Tuple[int, int, np.ndarray, np.ndarray]] = []
        self.lock = threading.Lock()
        self.sinks: List[EngineSink] = []
        self.tracks = threading.Event()
        peers: Dict[str, Peer] = {}

        def handler(name: str):
            def on_event(ev) -> None:
                other = peers.get("b" if name == "a" else "a")
                if ev.name == "ice-candidate" and other is not None:
                    other.add_ice_candidate(ev.i0, ev.str0)
                elif ev.name == "track" and name == "a" and ev.str0 == "video":
                    self.sinks.append(EngineSink(self.ctx, peers["a"], ev.i0, lib.SORA_SINK_VIDEO_BGR, self._on_frame))
                    self.tracks.set()
            return on_event

        self.a = peers["a"] = Peer(self.ctx, on_event=handler("a"))
        self.b = peers["b"] = Peer(self.ctx, on_event=handler("b"))
        self.a.add_transceiver("video", "recvonly", AV1_CAPS)
        self.b.set_remote_description("offer", self.a.create_offer())
        out = ffi.new("sora_video_source **")
        check(lib.sora_video_source_create(self.ctx.ptr, out))
        self.source = out[0]
        self.b.attach_video_source(self.source, 0, "AV1", PT, 400)
        self.b.set_direction(0, "sendonly")
        self.a.set_remote_description("answer", self.b.create_answer())
        # frames are pushed at 15 fps from a thread: whatever `picture` holds
        self.picture: Optional[np.ndarray] = None
        self.stop = threading.Event()
        self.pump = threading.Thread(target=self._pump, name="test-av1-pump", daemon=True)
        self.pump.start()

    def _on_frame(self, ev) -> None:
        width, height = ev.i0, ev.i1
        try:
            memory = ffi.buffer(ffi.cast("uint8_t *", ev.ptr), ev.size)
            pixels = np.frombuffer(memory, np.uint8).reshape(height, width, 3)
            left = pixels[:, : width // 2 - 8].reshape(-1, 3).mean(0)
            right = pixels[:, width // 2 + 8:].reshape(-1, 3).mean(0)
        finally:
            lib.sora_c_release(ev.ref)  # at once, not when (PyPy's) GC gets to it
        with self.lock:
            self.frames.append((width, height, left, right))


    def _pump(self, fps: float = 15) -> None:
        while not self.stop.wait(1 / fps):
            frame = self.picture
            if frame is not None:
                height, width = frame.shape[:2]
                check(lib.sora_video_source_push_bgr(self.source, ffi.from_buffer(frame), width, height, width * 3,
                                                     -1))

    def received(self, size: Tuple[int, int]) -> List[Tuple[int, int, np.ndarray, np.ndarray]]:
        with self.lock:
            return [f for f in self.frames if (f[0], f[1]) == size]

    def close(self) -> None:
        self.stop.set()
        self.pump.join(5)
        for sink in self.sinks:
            sink.close()
        self.a.close()
        self.b.close()
        lib.sora_video_source_destroy(self.source)
        self.ctx.close()


def _assert_colours(frames) -> None:
    for _, _, left, right in frames[-3:]:
        assert np.all(np.abs(left - LEFT) <= TOLERANCE), (left, LEFT)
        assert np.all(np.abs(right - RIGHT) <= TOLERANCE), (right, RIGHT)


@pytest.fixture
def loopback():
    lb = Loopback()
    try:
        yield lb
    finally:
        lb.close()


@pytest.mark.parametrize("size", [(320, 240), (640, 480)])
def test_peer_loopback_sends_and_decodes_av1(loopback, size):
    loopback.picture = _picture(*size)
    assert wait_until(lambda: len(loopback.received(size)) >= 10, 15), len(loopback.frames)
    frames = loopback.received(size)
    assert len(frames) == len(loopback.frames)  # nothing of another size
    _assert_colours(frames)
    stats = loopback.b.get_stats()  # the engine's raw statistics
    outbound = [s for s in stats if s.get("type") == "outbound-rtp"]
    codecs = {s["id"]: s for s in stats if s.get("type") == "codec"}
    assert len(outbound) == 1 and outbound[0]["bytes-sent"] > 0
    assert codecs[outbound[0]["codec-id"]]["mime-type"] == "video/AV1"


def test_peer_loopback_follows_a_resolution_change(loopback):
    loopback.picture = _picture(320, 240)
    assert wait_until(lambda: len(loopback.received((320, 240))) >= 5, 15), len(loopback.frames)
    loopback.picture = _picture(640, 480)
    assert wait_until(lambda: len(loopback.received((640, 480))) >= 5, 15), \
        [(w, h) for w, h, _, _ in loopback.frames][-5:]
    with loopback.lock:
        sizes = [(w, h) for w, h, _, _ in loopback.frames]
    switch = sizes.index((640, 480))
    assert set(sizes[:switch]) == {(320, 240)} and set(sizes[switch:]) == {(640, 480)}
    _assert_colours(loopback.received((640, 480)))


# ---------------------------------------------------------------------------
# SDK level, through the local Sora server
# ---------------------------------------------------------------------------


def _pump(video, seconds: float, width: int = 320, height: int = 240, fps: float = 15) -> int:
    frame = _picture(width, height)
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        frame[:32] = 0
        x = (count * 8) % (width - 32)
        frame[:32, x:x + 32] = 255
        video.on_captured(frame)
        count += 1
        time.sleep(1 / fps)
    return count


def test_sdk_sendonly_av1_reaches_the_server(local_sora, sora):
    video, conn, rec = connected_video_sender(sora, local_sora.signaling_url, "av1", video_codec_type="AV1",
                                              video_bit_rate=300)
    _pump(video, 1.5)
    assert wait_until(lambda: conn.connection_state == "connected", 10)
    stats = json.loads(conn.get_stats())
    outbound = {s["kind"]: s for s in stats if s["type"] == "outbound-rtp"}
    assert outbound["video"]["bytesSent"] > 0
    codecs = {s["id"]: s for s in stats if s["type"] == "codec"}
    assert codecs[outbound["video"]["codecId"]]["mimeType"] == "video/AV1"
    assert codecs[outbound["video"]["codecId"]]["payloadType"] == PT
    conn.disconnect()


def test_sdk_av1_through_the_sfu_is_decoded(local_sora, sora):
    received = []
    lock = threading.Lock()
    sinks = []

    def on_track(track) -> None:
        if track.kind != "video":
            return
        sink = sora_sdk.SoraVideoSink(track)

        def on_frame(frame) -> None:
            data = frame.data()[40:]
            left = data[:, : frame.width // 2 - 8].reshape(-1, 3).mean(0)
            right = data[:, frame.width // 2 + 8:].reshape(-1, 3).mean(0)
            with lock:
                received.append((frame.width, frame.height, left, right))

        sink.on_frame = on_frame
        sinks.append(sink)

    receiver = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly",
                                      channel_id="av1-sfu")
    rec_r = Recorder(receiver)
    receiver.on_track = on_track  # after Recorder, which sets its own
    receiver.connect()
    assert rec_r.connected.wait(15), rec_r.events
    video = sora.create_video_source()
    sender = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendonly",
                                    channel_id="av1-sfu", video_source=video, audio=False,
                                    video_codec_type="AV1", video_bit_rate=300)
    rec_s = Recorder(sender)
    sender.connect()
    assert rec_s.connected.wait(15), rec_s.events
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            _pump(video, 0.2)

    pump = threading.Thread(target=run, daemon=True)
    pump.start()
    try:
        assert wait_until(lambda: len(received) >= 8, 15), (len(received), rec_r.events[-3:])
    finally:
        stop.set()
        pump.join(5)
    with lock:
        frames = list(received)
    assert all((w, h) == (320, 240) for w, h, _, _ in frames)
    _assert_colours(frames)
    inbound = [s for s in json.loads(receiver.get_stats()) if s["type"] == "inbound-rtp" and s["kind"] == "video"]
    assert [s.get("decoderImplementation") for s in inbound] == ["dav1d"], inbound  # as libwebrtc names it
    sender.disconnect()
    receiver.disconnect()
