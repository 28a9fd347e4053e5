"""W3C webrtc-stats from the engine's statistics.

GStreamer 1.22's get-stats uses dashed names and has known faults (every
RTP stream reports the first transceiver's `kind` and `codec-id`, and the
local/remote candidate types are swapped). This module fixes those from the
data that is right (codec entries carry the SSRC and MIME type; the
candidate pair names which candidate is local), renames fields to the W3C
camelCase names and adds what the engine leaves out (DTLS state,
certificates, data channels, media sources).
"""
from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from typing import Dict, Iterable, List, Optional, Tuple

ENCODER_IMPLEMENTATIONS = {
    "VP8": "libvpx", "VP9": "libvpx", "AV1": "libaom", "H264": "x264", "H265": "x265", "OPUS": "libopus",
}
DECODER_IMPLEMENTATIONS = {
    "VP8": "libvpx", "VP9": "libvpx", "AV1": "dav1d", "H264": "FFmpeg", "H265": "FFmpeg", "OPUS": "libopus",
}


def camel(name: str) -> str:
    head, *rest = name.split("-")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _copy(src: dict, dst: dict, names: Iterable[str]) -> None:
    for name in names:
        if name in src:
            dst[camel(name)] = src[name]


def _certificate(cid: str, pem: str) -> Optional[dict]:
    body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    try:
        der = base64.b64decode(body)
    except ValueError:
        return None
    digest = hashlib.sha256(der).hexdigest().upper()
    return {
        "id": cid, "type": "certificate",
        "fingerprint": ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
        "fingerprintAlgorithm": "sha-256", "base64Certificate": body,
    }


# What stats call the engine elements an application can choose (sora_peer_set_video_encoder).
ELEMENT_IMPLEMENTATIONS = {"openh264enc": "OpenH264", "x264enc": "x264", "nvh264enc": "NVIDIA Video Codec SDK",
                           "nvh265enc": "NVIDIA Video Codec SDK", "nvcudah264enc": "NVIDIA Video Codec SDK",
                           "nvcudah265enc": "NVIDIA Video Codec SDK", "qsvh264enc": "Intel VPL",
                           "qsvh265enc": "Intel VPL", "qsvvp9enc": "Intel VPL", "qsvav1enc": "Intel VPL"}


def implementation_name(element: str) -> str:
    return ELEMENT_IMPLEMENTATIONS.get(element, element)


def to_w3c(raw: List[dict], *, data_channels: Iterable[dict] = (), media_sources: Iterable[dict] = (),
           outbound_extra: Optional[Dict[str, dict]] = None, ssrcs: Optional[Dict[int, dict]] = None,
           now_us: Optional[int] = None) -> List[dict]:
    """Convert the engine's raw stats into a list of W3C RTCStats dicts.

    `outbound_extra` maps kind ("audio"/"video") to fields added to that kind's
    outbound-rtp entries (encoder name, frame size, target bitrate...).
    `ssrcs` is `sdp.ssrc_table()` of the negotiated descriptions: it names each
    SSRC's kind and codec when the engine's codec entries do not, and folds RTX
    streams into the stream they repair (retransmitted*), as libwebrtc reports them.
    """
    ssrcs = dict(ssrcs or {})
    for item in raw:  # simulcast layers (tagged by Peer.get_stats): no a=ssrc lines name them
        layer = item.get("sora-simulcast")
        if item.get("type") == "outbound-rtp" and isinstance(layer, dict) and item.get("ssrc") not in ssrcs:
            ssrcs[item.get("ssrc")] = {"kind": "video", "mid": None, "codec": layer.get("codec"), "rtx_of": None}
    ts = int(time.time() * 1e6) if now_us is None else now_us
    by_ssrc: Dict[int, dict] = {}
    for item in raw:
        if item.get("type") == "codec" and "ssrc" in item:
            by_ssrc[item["ssrc"]] = item
    local_ids = set()
    remote_ids = set()
    for item in raw:
        if item.get("type") == "candidate-pair":
            local_ids.add(item.get("local-candidate-id"))
            remote_ids.add(item.get("remote-candidate-id"))
    dtls = next((i for i in raw if i.get("gst-name") == "sora-dtls-transport"), {})
    out: List[dict] = []
    codecs_out = {}
    transport_id = None
    outbound_extra = outbound_extra or {}

    def base(item: dict, kind: str) -> dict:
        return {"id": item["id"], "type": kind, "timestamp": ts}

    def codec_of(item: dict) -> Optional[dict]:
        codec = by_ssrc.get(item.get("ssrc"))
        direction = "encode" if item.get("type") in ("outbound-rtp", "remote-inbound-rtp") else "decode"
        if codec is None:  # the engine has not listed it yet: the same codec of the same direction will do
            known = ssrcs.get(item.get("ssrc"), {})
            codec = next((c for c in by_ssrc.values() if known.get("codec")
                          and c.get("mime-type", "").split("/")[-1].upper() == known["codec"]
                          and c.get("codec-type", direction) == direction), None)
        if codec is None or "mime-type" not in codec:
            codec = _sdp_codec(item, ssrcs, direction)
        if codec is not None:
            codecs_out[codec["id"]] = codec
        return codec

    def media_kind(item: dict) -> str:
        known = ssrcs.get(item.get("ssrc"))
        if known:
            return known["kind"]
        codec = by_ssrc.get(item.get("ssrc"))
        mime = codec.get("mime-type", "") if codec else ""
        return mime.split("/")[0] if "/" in mime else item.get("kind", "")

    def codec_name(item: dict) -> str:
        codec = by_ssrc.get(item.get("ssrc"))
        mime = codec.get("mime-type", "") if codec else ""
        return mime.split("/")[-1].upper() if mime else (ssrcs.get(item.get("ssrc"), {}).get("codec") or "")

    repairs: Dict[int, dict] = {}
    for item in raw:
        rtx_of = ssrcs.get(item.get("ssrc"), {}).get("rtx_of")
        if rtx_of is not None and item.get("type") in ("outbound-rtp", "inbound-rtp"):
            repairs[rtx_of] = item

    for item in raw:
        kind = item.get("type")
        if kind in ("outbound-rtp", "inbound-rtp", "remote-inbound-rtp", "remote-outbound-rtp"):
            if ssrcs.get(item.get("ssrc"), {}).get("rtx_of") is not None:
                continue  # folded into the stream it repairs below
            entry = base(item, kind)
            entry["ssrc"] = item.get("ssrc")
            entry["kind"] = media_kind(item)
            codec = codec_of(item)
            if codec is not None:
                entry["codecId"] = codec["id"]
            _copy(item, entry, ("transport-id",))
            transport_id = transport_id or item.get("transport-id")
            if kind == "outbound-rtp":
                _copy(item, entry, ("bytes-sent", "packets-sent", "fir-count", "pli-count", "nack-count", "remote-id"))
                name = codec_name(item)
                if name in ENCODER_IMPLEMENTATIONS:
                    entry["encoderImplementation"] = ENCODER_IMPLEMENTATIONS[name]
                entry["mediaSourceId"] = "media-source-" + entry["kind"]
                entry.update(outbound_extra.get(entry["kind"], {}))
                if isinstance(item.get("sora-simulcast"), dict):
                    layer = item["sora-simulcast"]
                    _simulcast_fields(entry, layer)
                    if "codecId" not in entry:  # the engine's send codec entry names no SSRC for simulcast
                        codec = next((c for c in raw if c.get("type") == "codec"
                                      and c.get("codec-type", "encode") == "encode"
                                      and c.get("mime-type", "").upper() == "VIDEO/" + (layer.get("codec") or "")),
                                     None)
                        if codec is not None:
                            codecs_out[codec["id"]] = codec
                            entry["codecId"] = codec["id"]
                _bandwidth_fields(item, entry)
                rtx = repairs.get(item.get("ssrc"))
                if rtx is not None:
                    entry["retransmittedPacketsSent"] = rtx.get("packets-sent", 0)
                    entry["retransmittedBytesSent"] = rtx.get("bytes-sent", 0)
            elif kind == "inbound-rtp":
                _copy(item, entry, ("packets-received", "bytes-received", "jitter", "fir-count", "pli-count",
                                    "nack-count", "remote-id"))
                src = item.get("gst-rtpsource-stats", {})
                lost = src.get("packets-lost", item.get("packets-lost", 0))
                entry["packetsLost"] = max(0, lost) if isinstance(lost, int) else 0
                name = codec_name(item)
                if name in DECODER_IMPLEMENTATIONS:
                    entry["decoderImplementation"] = DECODER_IMPLEMENTATIONS[name]
                entry["trackIdentifier"] = entry["id"]
                _decoded_fields(item, entry)
                rtx = repairs.get(item.get("ssrc"))
                if rtx is not None:
                    entry["retransmittedPacketsReceived"] = rtx.get("packets-received", 0)
                    entry["retransmittedBytesReceived"] = rtx.get("bytes-received", 0)
            elif kind == "remote-inbound-rtp":
                _copy(item, entry, ("local-id", "fraction-lost", "round-trip-time"))
                lost = item.get("packets-lost", 0)
                entry["packetsLost"] = max(0, lost) if isinstance(lost, int) else 0
            else:
                _copy(item, entry, ("local-id", "remote-timestamp"))
            out.append(entry)
        elif kind in ("local-candidate", "remote-candidate"):
            if item.get("id") in local_ids:
                kind = "local-candidate"
            elif item.get("id") in remote_ids:
                kind = "remote-candidate"
            entry = base(item, kind)
            _copy(item, entry, ("transport-id", "address", "port", "protocol", "candidate-type", "priority", "url"))
            entry["isRemote"] = kind == "remote-candidate"
            out.append(entry)
        elif kind == "candidate-pair":
            entry = base(item, kind)
            _copy(item, entry, ("local-candidate-id", "remote-candidate-id"))
            entry["transportId"] = transport_id
            entry["state"] = "succeeded"
            entry["nominated"] = True
            out.append(entry)
        elif kind == "transport":
            entry = base(item, kind)
            _copy(item, entry, ("selected-candidate-pair-id",))
            transport_id = transport_id or item["id"]
            _add_transport_state(entry, dtls)
            out.append(entry)
        elif kind == "peer-connection":
            entry = base(item, kind)
            channels = list(data_channels)
            entry["dataChannelsOpened"] = sum(1 for c in channels if c.get("opened"))
            entry["dataChannelsClosed"] = sum(1 for c in channels if c.get("state") == "closed")
            out.append(entry)
    for cid, codec in codecs_out.items():
        entry = base(codec, "codec")
        _copy(codec, entry, ("payload-type", "mime-type", "clock-rate", "channels", "sdp-fmtp-line"))
        if "sdpFmtpLine" not in entry:  # GStreamer 1.26's codec entries leave it out: the negotiated a=fmtp
            fmtp = next((t.get("fmtp") for t in ssrcs.values()
                         if t.get("payload_type") == entry.get("payloadType") and t.get("fmtp")), None)
            if fmtp:
                entry["sdpFmtpLine"] = fmtp
        if "sdpFmtpLine" in entry:
            fmtp = entry["sdpFmtpLine"]
            entry["sdpFmtpLine"] = fmtp.split(" ", 1)[1] if " " in fmtp else fmtp
        if "mimeType" in entry:
            kind_part, _, name = entry["mimeType"].partition("/")
            entry["mimeType"] = kind_part + "/" + (name if name.upper() != "OPUS" else "opus")
        if transport_id:
            entry["transportId"] = transport_id
        out.append(entry)
    if dtls:
        if not any(e["type"] == "transport" for e in out):
            entry = {"id": "transport-0", "type": "transport", "timestamp": ts}
            _add_transport_state(entry, dtls)
            out.append(entry)
        for cid, key in (("certificate-local", "certificate"), ("certificate-remote", "remote-certificate")):
            cert = _certificate(cid, dtls.get(key, "")) if dtls.get(key) else None
            if cert is not None:
                cert["timestamp"] = ts
                out.append(cert)
    for channel in data_channels:
        entry = {"id": "data-channel-%d" % channel["id"], "type": "data-channel", "timestamp": ts,
                 "label": channel["label"], "protocol": channel.get("protocol", ""),
                 "dataChannelIdentifier": channel["id"], "state": channel["state"],
                 "messagesSent": channel["messages_sent"], "bytesSent": channel["bytes_sent"],
                 "messagesReceived": channel["messages_received"], "bytesReceived": channel["bytes_received"]}
        out.append(entry)
    for source in media_sources:
        entry = {"type": "media-source", "timestamp": ts}
        entry.update(source)
        out.append(entry)
    return out


def _sdp_codec(item: dict, ssrcs: Dict[int, dict], direction: str) -> Optional[dict]:
    """A codec entry (in the engine's dashed form) for an RTP stream the engine lists no codec of (its receive
    side lists none with data): from the negotiated description that names the stream's SSRC. Its id is one
    per direction and payload type, as libwebrtc has one codec object per payload type in use each way."""
    known = ssrcs.get(item.get("ssrc")) or {}
    pt, name = known.get("payload_type"), known.get("name")
    if not isinstance(pt, int) or not name:
        return None
    codec = {"id": "codec-%s-%d" % ("outbound" if direction == "encode" else "inbound", pt), "payload-type": pt,
             "mime-type": "%s/%s" % (known.get("kind") or "video", name), "codec-type": direction}
    if known.get("clock_rate"):
        codec["clock-rate"] = known["clock_rate"]
    if known.get("kind") == "audio" and known.get("channels"):
        codec["channels"] = known["channels"]
    if known.get("fmtp"):
        codec["sdp-fmtp-line"] = known["fmtp"]
    return codec


# Simulcast layer sizes follow libwebrtc's rule; csrc/src/simulcast.c (layer_size) encodes by the same rule
# and explains it: sizes aligned down to LAYER_ALIGNMENT, scaleResolutionDownBy rounded to nearest (at least
# 16 pixels), scaleResolutionDownTo by VideoAdapter's crop to the request's aspect and its 3/4 - 2/3 scale
# search, rounded to a multiple of (denominator x alignment).
LAYER_ALIGNMENT = 16
LAYER_MIN_SIZE = 16


def _align_down(value: int) -> int:
    return value // LAYER_ALIGNMENT * LAYER_ALIGNMENT if value >= LAYER_ALIGNMENT else value


def _f32(value: float) -> float:
    """`value` rounded to single precision (the VideoAdapter's aspect arithmetic is in float)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _find_scale(width: int, height: int, target: int) -> Tuple[int, int]:
    pixels = width * height
    if target >= pixels:
        return 1, 1
    num = den = 1
    if width % 3 == 0 and height % 3 == 0:
        num = den = 6
    if width % 9 == 0 and height % 9 == 0:
        num = den = 36
    best, best_diff = (1, 1), None
    while num * num * pixels // (den * den) > target:
        if num % 3 == 0 and den % 2 == 0:
            num, den = num // 3, den // 2
        else:
            num, den = num * 3, den * 4
        out = num * num * pixels // (den * den)
        if out <= target and (best_diff is None or target - out < best_diff):
            best, best_diff = (num, den), target - out
    g = math.gcd(*best)
    return best[0] // g, best[1] // g


def simulcast_layer_size(width: int, height: int, layer: dict) -> Tuple[int, int]:
    """The frame size the engine encodes a `width`x`height` source at for one planned layer (libwebrtc's)."""
    w, h = _align_down(width), _align_down(height)
    max_width, max_height = layer.get("max_width") or 0, layer.get("max_height") or 0
    if max_width <= 0 and max_height <= 0:
        scale = max(layer.get("scale") or 1.0, 1.0)
        if scale <= 1.0:
            return w, h
        return tuple(_align_down(v if v <= LAYER_MIN_SIZE else max(int(v / scale + 0.5), LAYER_MIN_SIZE))
                     for v in (w, h))
    box_w = max_width if max_width > 0 else int(round(max_height * w / h))
    box_h = max_height if max_height > 0 else int(round(max_width * h / w))
    box_w, box_h = max(box_w, 1), max(box_h, 1)
    long_side, short_side = max(box_w, box_h), min(box_w, box_h)
    aspect = _f32(_f32(long_side) / _f32(short_side)) if w > h else _f32(_f32(short_side) / _f32(long_side))
    crop_w = min(w, int(_f32(h * aspect)))
    crop_h = min(h, int(_f32(w / aspect)))
    num, den = _find_scale(crop_w, crop_h, box_w * box_h)

    def round_up_within(value: int, multiple: int, most: int) -> int:
        rounded = (value + multiple - 1) // multiple * multiple
        return rounded if rounded <= most else most // multiple * multiple

    return (round_up_within(crop_w, den * LAYER_ALIGNMENT, w) // den * num,
            round_up_within(crop_h, den * LAYER_ALIGNMENT, h) // den * num)


def _simulcast_fields(entry: dict, layer: dict) -> None:
    """Per-rid outbound-rtp fields of one simulcast layer, as libwebrtc reports them."""
    entry["rid"] = layer["rid"]
    entry["active"] = bool(layer["active"])
    impl = ENCODER_IMPLEMENTATIONS.get(layer.get("codec") or "", "unknown")
    entry["encoderImplementation"] = "SimulcastEncoderAdapter (%s)" % ", ".join(
        [impl] * max(int(layer.get("active_layers") or 0), 1))
    if layer.get("scalability_mode"):
        entry["scalabilityMode"] = layer["scalability_mode"]
    width, height = entry.get("frameWidth"), entry.get("frameHeight")
    if not layer["active"]:
        for name in ("frameWidth", "frameHeight", "targetBitrate", "framesPerSecond"):
            entry.pop(name, None)
        return
    entry["targetBitrate"] = layer["bitrate"]
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        entry["frameWidth"], entry["frameHeight"] = simulcast_layer_size(width, height, layer)


def _bandwidth_fields(item: dict, entry: dict) -> None:
    """What the engine's send bandwidth controller says of an outbound stream (csrc/src/bwe.c) replaces the
    requested values: targetBitrate is the encoder's target as libwebrtc defines it (the current estimate's
    share less the packet overhead, so below the cap), qualityLimitationReason is "bandwidth" while it limits
    the stream, qualityLimitationDurations the seconds spent in each reason (this engine knows no "cpu" or
    "other" limit: 0), qualityLimitationResolutionChanges how often the adaptation changed the picture size,
    frameWidth/frameHeight/framesPerSecond what is encoded."""
    if isinstance(item.get("sora-media-target-bitrate"), int):
        entry["targetBitrate"] = item["sora-media-target-bitrate"]
    elif isinstance(item.get("sora-target-bitrate"), int):
        entry["targetBitrate"] = item["sora-target-bitrate"]
    if isinstance(item.get("sora-quality-limitation"), str):
        entry["qualityLimitationReason"] = item["sora-quality-limitation"]
    none, bandwidth = item.get("sora-quality-limitation-none"), item.get("sora-quality-limitation-bandwidth")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (none, bandwidth)):
        entry["qualityLimitationDurations"] = {"other": 0.0, "cpu": 0.0, "bandwidth": round(float(bandwidth), 3),
                                               "none": round(float(none), 3)}
    if isinstance(item.get("sora-quality-limitation-resolution-changes"), int):
        entry["qualityLimitationResolutionChanges"] = item["sora-quality-limitation-resolution-changes"]
    width, height = item.get("sora-frame-width"), item.get("sora-frame-height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        entry["frameWidth"], entry["frameHeight"] = width, height
    fps = item.get("sora-frames-per-second")
    if isinstance(fps, (int, float)) and not isinstance(fps, bool):
        entry["framesPerSecond"] = round(float(fps), 2)
    for field, name in (("sora-frames-encoded", "framesEncoded"), ("sora-key-frames-encoded", "keyFramesEncoded")):
        if isinstance(item.get(field), int):
            entry[name] = item[field]


def _decoded_fields(item: dict, entry: dict) -> None:
    """What the sinks on an inbound video stream decoded (csrc/src/receive.c): framesDecoded, keyFramesDecoded,
    frameWidth/frameHeight and framesPerSecond. Absent while no sink decodes the track."""
    for field, name in (("sora-frames-decoded", "framesDecoded"), ("sora-key-frames-decoded", "keyFramesDecoded")):
        if isinstance(item.get(field), int):
            entry[name] = item[field]
    width, height = item.get("sora-frame-width"), item.get("sora-frame-height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        entry["frameWidth"], entry["frameHeight"] = width, height
    fps = item.get("sora-frames-per-second")
    if "framesDecoded" in entry and isinstance(fps, (int, float)) and not isinstance(fps, bool):
        entry["framesPerSecond"] = round(float(fps), 2)


def _add_transport_state(entry: dict, dtls: dict) -> None:
    if not dtls:
        return
    entry["dtlsState"] = dtls.get("dtls-state", "new")
    if "ice-state" in dtls:
        entry["iceState"] = dtls["ice-state"]
    if "ice-role" in dtls:
        entry["iceRole"] = dtls["ice-role"]
    if dtls.get("certificate"):
        entry["localCertificateId"] = "certificate-local"
    if dtls.get("remote-certificate"):
        entry["remoteCertificateId"] = "certificate-remote"
