"""Codec lines of the local Sora server's offers, written as real Sora writes them.

* **Encoding names.** webrtcbin writes an ``a=rtpmap`` name as the caps spell it, and its
  Opus caps must say ``OPUS`` (the RTP elements match that), so its offers carry
  ``OPUS/48000/2``; libwebrtc then reports ``mimeType`` ``audio/OPUS``. Sora and browsers write
  ``opus`` (RFC 7587's media subtype) and ``VP8``, ``VP9``, ``AV1``, ``H264``, ``H265``: the
  offer text is rewritten to those names (`sora_codec_lines`). The answer comes back in the
  client's spelling, which webrtcbin reads case-insensitively.
* **Opus parameters.** Every Opus m-line of an offer gets ``a=fmtp:<pt> minptime=10;useinbandfec=1``
  (what Sora and browsers offer), overridden and extended by the connect's
  ``audio.opus_params`` (the fields of Sora's ``opus_params``, as the JS SDK types them:
  ``channels``, ``maxplaybackrate``, ``minptime``, ``ptime``, ``stereo``, ``sprop_stereo``,
  ``useinbandfec``, ``usedtx``; booleans become 0/1, ``sprop_stereo`` is written
  ``sprop-stereo``, ``channels`` 1 / 2 gives ``stereo`` and ``sprop-stereo`` 0 / 1 unless those are
  given). libwebrtc, answering, encodes as these ask (e.g. ``usedtx=1``: DTX on;
  ``maxplaybackrate=16000``: wide band at most) and shows them in its codec stats' ``sdpFmtpLine``.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

# Encoding name (upper case) -> how Sora writes it in an offer.
SDP_ENCODING_NAMES = {"OPUS": "opus", "VP8": "VP8", "VP9": "VP9", "AV1": "AV1", "H264": "H264", "H265": "H265",
                      "RTX": "rtx", "RED": "red", "ULPFEC": "ulpfec"}

# Sora's opus_params keys -> (fmtp name, kind, (low, high) for integers).
OPUS_PARAMS = {
    "minptime": ("minptime", int, (3, 120)),
    "useinbandfec": ("useinbandfec", bool, None),
    "stereo": ("stereo", bool, None),
    "sprop_stereo": ("sprop-stereo", bool, None),
    "maxplaybackrate": ("maxplaybackrate", int, (8000, 48000)),
    "ptime": ("ptime", int, (3, 120)),
    "usedtx": ("usedtx", bool, None),
    "channels": (None, int, (1, 2)),
}
OPUS_FMTP_DEFAULT: Tuple[Tuple[str, int], ...] = (("minptime", 10), ("useinbandfec", 1))

_RTPMAP_RE = re.compile(r"a=rtpmap:(\d+) ([^/\s]+)(/.*)?\Z")


class OpusParamsError(ValueError):
    """`audio.opus_params` of a connect is not an object of known fields with valid values."""


def check_opus_params(value: Any) -> Optional[Dict[str, Any]]:
    """The connect's ``audio.opus_params`` checked (None when absent); OpusParamsError if invalid.
    Unknown keys are kept out (a newer Sora may know more)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise OpusParamsError("opus_params must be an object")
    out: Dict[str, Any] = {}
    for key, item in value.items():
        spec = OPUS_PARAMS.get(key)
        if spec is None:
            continue
        _, kind, bounds = spec
        if kind is bool:
            if not isinstance(item, bool):
                raise OpusParamsError("opus_params.%s must be a boolean" % key)
        else:
            if not isinstance(item, int) or isinstance(item, bool) or not bounds[0] <= item <= bounds[1]:
                raise OpusParamsError("opus_params.%s must be an integer in %d..%d" % ((key,) + bounds))
        out[key] = item
    return out


def opus_fmtp(params: Optional[Dict[str, Any]]) -> str:
    """The ``a=fmtp`` parameter text for Opus: the defaults, then `params` (checked) over them."""
    values: Dict[str, int] = dict(OPUS_FMTP_DEFAULT)
    params = params or {}
    channels = params.get("channels")
    if channels is not None:
        for key in ("stereo", "sprop_stereo"):
            if key not in params:
                values[OPUS_PARAMS[key][0]] = 1 if channels == 2 else 0
    for key, (name, kind, _) in OPUS_PARAMS.items():
        if name is None or key not in params:
            continue
        values[name] = int(params[key])
    order = [name for name, _, _ in OPUS_PARAMS.values() if name is not None]
    return ";".join("%s=%d" % (name, values[name]) for name in order if name in values)


def sora_codec_lines(sdp: str, opus_params: Optional[Dict[str, Any]] = None) -> str:
    """`sdp` with Sora's encoding names in its ``a=rtpmap`` lines and the Opus ``a=fmtp`` line
    (replacing one webrtcbin wrote) on every Opus payload type."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    out: List[str] = []
    fmtp = opus_fmtp(opus_params)
    opus_pts: List[str] = []
    for line in lines:
        match = _RTPMAP_RE.match(line)
        if match is not None:
            pt, name, rest = match.group(1), match.group(2), match.group(3) or ""
            name = SDP_ENCODING_NAMES.get(name.upper(), name)
            line = "a=rtpmap:%s %s%s" % (pt, name, rest)
            out.append(line)
            if name == "opus":
                opus_pts.append(pt)
                out.append("a=fmtp:%s %s" % (pt, fmtp))
            continue
        if line.startswith("a=fmtp:") and line[7:].split(" ", 1)[0] in opus_pts:
            continue  # (webrtcbin's own, replaced by the one above)
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    return "\r\n".join(out) + "\r\n"


def offer_codecs(session, sdp: str) -> str:
    """The codec lines of an offer to `session` as Sora writes them (its ``opus_params`` applied)."""
    return sora_codec_lines(sdp, getattr(session, "opus_params", None))
