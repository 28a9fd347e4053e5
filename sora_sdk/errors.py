"""Exceptions raised by sora_sdk.

Every failure of the engine shim surfaces as one of these. Each also derives
from the built-in exception a caller would naturally catch (ValueError for a
bad argument, RuntimeError for a bad state, TimeoutError for a timeout).
"""
from __future__ import annotations


class SoraError(Exception):
    """Base of every sora_sdk error; `code` is the shim's error code (0 if none)."""

    code = 0

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class SoraInvalidArgument(SoraError, ValueError):
    """An argument was rejected (wrong value, shape, size or encoding)."""


class SoraInvalidState(SoraError, RuntimeError):
    """The object is closed, disconnected or not ready for this call."""


class SoraEngineError(SoraError, RuntimeError):
    """The media engine (GStreamer webrtcbin) refused or failed."""


class SoraTimeout(SoraError, TimeoutError):
    """The engine did not answer in time."""


class SoraNotFound(SoraError, LookupError):
    """No such data channel, track or engine element."""


class SoraUnsupported(SoraError, RuntimeError):
    """The codec or feature is not available in this engine build."""


class SoraNoMemory(SoraError, MemoryError):
    """The engine could not allocate memory."""


# Shim error codes (csrc/include/sora_c.h) to exception classes.
BY_CODE = {
    -1: SoraInvalidArgument,
    -2: SoraInvalidState,
    -3: SoraEngineError,
    -4: SoraTimeout,
    -5: SoraNotFound,
    -6: SoraUnsupported,
    -7: SoraNoMemory,
}
