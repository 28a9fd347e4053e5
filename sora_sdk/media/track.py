"""Tracks: the common interface of local sources and remote tracks."""
from __future__ import annotations

import logging
import secrets
import string
import threading

from ..enums import SoraTrackState
from ..errors import SoraInvalidState

_ID_ALPHABET = string.ascii_letters + string.digits
log = logging.getLogger("sora_sdk")


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
    """A remote track announced by `SoraConnection.on_track`; give it to a sink to receive its media."""

    def __new__(cls, *args, **kwargs):
        if not kwargs.pop("_internal", False):
            raise TypeError("SoraMediaTrack has no public constructor")
        return super().__new__(cls)

    def __init__(self, kind: str, track_id: str, stream_id: str, mid: str, *, _internal=False) -> None:
        super().__init__(kind, track_id)
        self._stream_id = stream_id
        self._mid = mid
        self._lock = threading.Lock()
        self._sinks = []
        self._binding = None  # (context, peer, engine track id) once media arrives
        self._transformer = None
        self._transform = None  # the engine transform of the binding

    @property
    def stream_id(self) -> str:
        return self._stream_id

    def set_frame_transformer(self, transformer) -> None:
        """Transform this track's encoded frames before they are decoded (call it inside on_track, before
        creating sinks: sinks created earlier keep receiving untransformed frames)."""
        from .transform import SoraAudioFrameTransformer, SoraFrameTransformer, SoraVideoFrameTransformer

        expected = SoraVideoFrameTransformer if self.kind == "video" else SoraAudioFrameTransformer
        if not isinstance(transformer, SoraFrameTransformer):
            raise TypeError("set_frame_transformer() expects a %s, got %s"
                            % (expected.__name__, type(transformer).__name__))
        if not isinstance(transformer, expected):
            raise ValueError("a %s track needs a %s" % (self.kind, expected.__name__))
        with self._lock:
            if self._state == SoraTrackState.ENDED:
                raise SoraInvalidState("the track has ended")
            self._transformer = transformer
            binding = self._binding
        if binding is not None:
            self._apply_transformer(*binding)

    def _apply_transformer(self, context, peer, engine_track_id: int) -> None:
        with self._lock:
            transformer, old = self._transformer, self._transform
            self._transform = None
        if old is not None:
            old[0]._detach(old[1])
        if transformer is None:
            return
        engine = transformer._attach(context)
        with self._lock:
            self._transform = (transformer, engine)
        peer.set_track_transform(engine_track_id, engine)

    def _add_sink(self, sink) -> None:
        with self._lock:
            if self._state == SoraTrackState.ENDED:
                raise SoraInvalidState("the %s track %s has ended (its connection is over): a sink on it would "
                                       "never receive anything" % (self.kind, self.id))
            self._sinks.append(sink)
            binding = self._binding
        if binding is not None:
            sink._bind(*binding)

    def _bind(self, context, peer, engine_track_id: int) -> None:
        with self._lock:
            self._binding = (context, peer, engine_track_id)
            sinks = list(self._sinks)
            transformer = self._transformer
        if transformer is not None:
            try:
                self._apply_transformer(context, peer, engine_track_id)
            except Exception:
                log.exception("cannot set the frame transformer of %s track %s", self.kind, self.id)
        for sink in sinks:
            try:
                sink._bind(context, peer, engine_track_id)
            except Exception:
                log.exception("cannot start a sink for %s track %s", self.kind, self.id)

    @property
    def _bound(self) -> bool:
        return self._binding is not None

    def _end(self) -> None:
        super()._end()
        with self._lock:
            sinks, self._sinks = self._sinks, []
            self._binding = None
            transform, self._transform = self._transform, None
        for sink in sinks:
            try:
                sink.close()
            except Exception:
                log.debug("closing a sink failed", exc_info=True)
        if transform is not None:
            transform[0]._detach(transform[1])
