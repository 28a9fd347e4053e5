"""sora_sdk: a Python client SDK for the WebRTC SFU Sora, API-compatible with the official one.

The media engine is GStreamer's webrtcbin behind a small C shim (libsora_c)
loaded with cffi; see README.md.
"""
from __future__ import annotations

import inspect as _inspect
import os as _os

from ._ffi import cstr as _cstr
from ._ffi import lib as _lib
from .codec import (SoraVideoCodecCapability, SoraVideoCodecPreference,
                    create_video_codec_preference_from_implementation, get_video_codec_capability)
from .connection import SoraConnection
from .enums import (SoraDegradationPreference, SoraLoggingSeverity, SoraSignalingDirection, SoraSignalingErrorCode,
                    SoraSignalingType, SoraTrackState, SoraTransformableAudioFrameType,
                    SoraTransformableFrameDirection, SoraVideoCodecImplementation, SoraVideoCodecType)
from .errors import (SoraEngineError, SoraError, SoraInvalidArgument, SoraInvalidState, SoraNotFound, SoraTimeout,
                     SoraUnsupported)
from .media.audio_sink import (SoraAudioFrame, SoraAudioSink, SoraAudioSinkImpl, SoraAudioStreamSink,
                               SoraAudioStreamSinkImpl)
from .media.audio_source import SoraAudioSource
from .media.track import SoraMediaTrack, SoraTrackInterface
from .media.transform import (SoraAudioFrameTransformer, SoraFrameTransformer, SoraTransformableAudioFrame,
                              SoraTransformableFrame, SoraTransformableVideoFrame, SoraVideoFrameTransformer)
from .media.video_sink import SoraVideoFrame, SoraVideoSink, SoraVideoSinkImpl
from .media.video_source import SoraVideoSource
from .sora import Sora
from .vad import SoraVAD
from .version import VERSION as __version__


def enable_libwebrtc_log(severity: SoraLoggingSeverity, /) -> None:
    """Send the engine's (GStreamer's) log at `severity` and above to stderr."""
    value = SoraLoggingSeverity(severity)
    if _lib.sora_c_set_log_severity(int(value)) < 0:
        raise ValueError("invalid severity %r" % (severity,))


def rtc_log(severity: SoraLoggingSeverity, message: str, /) -> None:
    """Write one line to the engine log, prefixed with the caller's file and line."""
    value = SoraLoggingSeverity(severity)
    if not isinstance(message, str):
        raise TypeError("message must be a str")
    frame = _inspect.currentframe()
    caller = frame.f_back if frame is not None else None
    where = "[%s:%d] " % (_os.path.basename(caller.f_code.co_filename), caller.f_lineno) if caller else ""
    _lib.sora_c_log(int(value), _cstr(where + message))


__all__ = [
    "Sora", "SoraConnection", "SoraAudioSource", "SoraVideoSource", "SoraVideoSink", "SoraVideoSinkImpl",
    "SoraVideoFrame", "SoraAudioSink", "SoraAudioSinkImpl", "SoraAudioStreamSink", "SoraAudioStreamSinkImpl",
    "SoraAudioFrame", "SoraVAD", "SoraTrackInterface", "SoraMediaTrack",
    "SoraFrameTransformer", "SoraAudioFrameTransformer", "SoraVideoFrameTransformer", "SoraTransformableFrame",
    "SoraTransformableAudioFrame", "SoraTransformableVideoFrame",
    "SoraVideoCodecCapability", "SoraVideoCodecPreference", "get_video_codec_capability",
    "create_video_codec_preference_from_implementation", "enable_libwebrtc_log", "rtc_log",
    "SoraSignalingErrorCode", "SoraSignalingType", "SoraSignalingDirection", "SoraDegradationPreference",
    "SoraTrackState", "SoraLoggingSeverity", "SoraTransformableFrameDirection", "SoraTransformableAudioFrameType",
    "SoraVideoCodecImplementation", "SoraVideoCodecType", "SoraError", "SoraInvalidArgument", "SoraInvalidState",
    "SoraEngineError", "SoraTimeout", "SoraNotFound", "SoraUnsupported", "__version__",
]
