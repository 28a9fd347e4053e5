"""Enumerations of the Sora Python SDK API.

Every enum is an :class:`enum.IntEnum` with the names, values and
declaration order of the official ``sora_sdk`` stubs.

The official SDK builds its enums with nanobind, which pins ``__str__`` (and
``__repr__``) to ``enum.Enum.__str__``, so ``str(x)`` and ``repr(x)`` give
``"SoraSignalingErrorCode.CLOSE_SUCCEEDED"`` on every Python version, and
``f"{x}"`` gives the same text (on Python 3.11+ ``int.__format__`` with an
empty format spec falls back to ``str()``).  Python 3.9 formats an IntEnum
through its integer value instead, so ``__format__`` is pinned here as well:
all three spellings print the same on CPython 3.9/3.11+ and PyPy.  A format
spec that is not empty (``f"{x:d}"``, ``f"{x:>3}"``) formats the integer.
"""

from __future__ import annotations

import enum

__all__ = [
    "SoraSignalingErrorCode",
    "SoraSignalingType",
    "SoraSignalingDirection",
    "SoraDegradationPreference",
    "SoraTrackState",
    "SoraLoggingSeverity",
    "SoraTransformableFrameDirection",
    "SoraTransformableAudioFrameType",
    "SoraVideoCodecImplementation",
    "SoraVideoCodecType",
]


def _enum_str(self: enum.Enum) -> str:
    return "%s.%s" % (type(self).__name__, self._name_)


def _enum_format(self: enum.Enum, format_spec: str) -> str:
    if not format_spec:
        return str(self)
    return format(int(self._value_), format_spec)


class _SoraIntEnum(enum.IntEnum):
    """Base class: an IntEnum whose str()/repr()/format() is ``Class.NAME``."""

    __str__ = _enum_str
    __repr__ = _enum_str
    __format__ = _enum_format


class SoraSignalingErrorCode(_SoraIntEnum):
    """Why a connection ended (first argument of ``on_disconnect``)."""

    CLOSE_SUCCEEDED = 0
    CLOSE_FAILED = 1
    INTERNAL_ERROR = 2
    INVALID_PARAMETER = 3
    WEBSOCKET_HANDSHAKE_FAILED = 4
    WEBSOCKET_ONCLOSE = 5
    WEBSOCKET_ONERROR = 6
    PEER_CONNECTION_STATE_FAILED = 7
    ICE_FAILED = 8
    # Added in 2026.2.0.dev4.
    DATACHANNEL_CLOSED = 9


class SoraSignalingType(_SoraIntEnum):
    """Transport a signaling message went through."""

    WEBSOCKET = 0
    DATACHANNEL = 1


class SoraSignalingDirection(_SoraIntEnum):
    """Whether a signaling message was sent or received."""

    SENT = 0
    RECEIVED = 1


class SoraDegradationPreference(_SoraIntEnum):
    """libwebrtc's DegradationPreference (declaration order of the stub)."""

    DISABLED = 0
    BALANCED = 3
    MAINTAIN_FRAMERATE = 1
    MAINTAIN_RESOLUTION = 2


class SoraTrackState(_SoraIntEnum):
    """MediaStreamTrack state."""

    LIVE = 0
    ENDED = 1


class SoraLoggingSeverity(_SoraIntEnum):
    """libwebrtc log severity."""

    VERBOSE = 0
    INFO = 1
    WARNING = 2
    ERROR = 3
    NONE = 4


class SoraTransformableFrameDirection(_SoraIntEnum):
    """Direction of an encoded-transform frame."""

    UNKNOWN = 0
    RECEIVER = 1
    SENDER = 2


class SoraTransformableAudioFrameType(_SoraIntEnum):
    """Type of an encoded audio frame."""

    EMPTY = 0
    SPEECH = 1
    CN = 2


class SoraVideoCodecImplementation(_SoraIntEnum):
    """A video codec engine (``to_json`` spells these in lowercase snake case)."""

    INTERNAL = 0
    CISCO_OPENH264 = 1
    INTEL_VPL = 2
    NVIDIA_VIDEO_CODEC_SDK = 3
    AMD_AMF = 4
    RASPI_V4L2M2M = 5


class SoraVideoCodecType(_SoraIntEnum):
    """Video codec; values follow libwebrtc's ``VideoCodecType``."""

    VP8 = 1
    VP9 = 2
    H264 = 4
    H265 = 5
    AV1 = 3
