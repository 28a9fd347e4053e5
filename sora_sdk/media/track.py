"""Tracks: the common interface of local sources and remote tracks."""
from __future__ import annotations

import secrets
import string

from ..enums import SoraTrackState
from ..errors import SoraUnsupported

_ID_ALPHABET = string.ascii_letters + string.digits


def random_track_id() -> str:
    """16 random alphanumeric characters, like the official SDK's local track ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


class SoraTrackInterface:
    """A media track: `kind` is "audio" or "video"."""

    def __init__(self, kind: str, track_id: str) -> None:
        self._kind = kind
        self._id = track_id
        self._enabled = True
        self._state = SoraTrackState.LIVE

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def id(self) -> str:
        return self._id

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def state(self) -> SoraTrackState:
        return self._state

    def set_enabled(self, enable: bool) -> bool:
        """Enable or disable the track (a disabled track sends black frames / silence)."""
        self._enabled = bool(enable)
        return True

    def _end(self) -> None:
        self._state = SoraTrackState.ENDED

    def __repr__(self) -> str:
        return "<%s kind=%s id=%s>" % (type(self).__name__, self._kind, self._id)


class SoraMediaTrack(SoraTrackInterface):
    """A remote track announced by `SoraConnection.on_track`."""

    def __init__(self, kind: str, track_id: str, stream_id: str, mid: str) -> None:
        super().__init__(kind, track_id)
        self._stream_id = stream_id
        self._mid = mid

    @property
    def stream_id(self) -> str:
        return self._stream_id

    def set_frame_transformer(self, transformer) -> None:
        raise SoraUnsupported("encoded frame transformers are not available in this build yet")
