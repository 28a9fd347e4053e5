"""The engine side of a sink: one shim sink bound to a remote track, delivering on its own thread."""
from __future__ import annotations

import logging
import threading
from typing import Optional

from .._ffi import EventRouter, check, ffi, lib

log = logging.getLogger("sora_sdk")


class EngineSink:
    """Owns one `sora_sink`. `on_event(Event)` runs on the sink's own thread."""

    def __init__(self, context, peer, track_id: int, fmt: int, on_event, capacity: int = 0,
                 sample_rate: int = 0, channels: int = 0) -> None:
        self._context = context
        self._router = EventRouter(on_event)
        cfg = ffi.new("sora_sink_config *")
        cfg.format = fmt
        cfg.capacity = capacity
        cfg.sample_rate = sample_rate
        cfg.channels = channels
        out = ffi.new("sora_sink **")
        with peer._use() as ptr:
            check(lib.sora_sink_create(ptr, track_id, cfg, self._router.callbacks, out), "create sink")
        self._ptr = out[0]
        self._lock = threading.Lock()
        self._closed = False

    def dropped(self) -> int:
        with self._lock:
            if self._closed:
                return 0
            return self._context.call(lib.sora_sink_dropped, self._ptr, closed=0)

    def close(self) -> None:
        """Stop delivery (a callback running on another thread gets a few seconds to return first) and release
        the sink; its router goes once its thread has left the last callback. Legal inside its own callback."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            rc = self._context.call(lib.sora_sink_destroy, self._ptr, closed=None)
            if rc is None:
                # The context is closed (its peers with it): the sink's memory is still ours to release, and it
                # keeps what it needs of the context alive (sora_c.h, ownership).
                rc = lib.sora_sink_destroy(self._ptr)
        if rc < 0:
            log.debug("sink destroy: %s", ffi.string(lib.sora_c_last_error()))


class SinkBase:
    """What every sink shares: its callbacks, the engine sink once the track has media, and closing."""

    def __init__(self, track, kind: str, what: str) -> None:
        from .track import SoraTrackInterface

        if not isinstance(track, SoraTrackInterface) or not hasattr(track, "_add_sink"):
            raise TypeError("%s needs a remote track from on_track, got %s" % (what, type(track).__name__))
        if track.kind != kind:
            raise ValueError("%s needs a %s track, got a %s track" % (what, kind, track.kind))
        self._callbacks = {}
        self._closed = False
        self._engine: Optional[EngineSink] = None
        self._track_ref = track

    def _attach(self) -> None:
        """Register with the track (last step of __init__: the track may bind at once)."""
        self._track_ref._add_sink(self)

    @property
    def dropped(self) -> int:
        """What was dropped because the callbacks fell behind: video frames, or decoded audio buffers (10-20 ms
        each) for the audio sinks (additive API)."""
        return self._engine.dropped() if self._engine is not None else 0

    def close(self) -> None:
        """Stop receiving (additive API): no callback starts after this returns (legal inside a callback)."""
        self._closed = True
        if self._engine is not None:
            self._engine.close()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            try:
                engine.close()
            except Exception:
                pass


def frame_view(event, nbytes: int):
    """A bytes-like view of a frame event's memory that releases the frame when garbage-collected."""
    ref = event.ref
    owner = ffi.gc(ffi.cast("uint8_t *", event.ptr), lambda _p, r=ref: lib.sora_c_release(r), size=nbytes)
    return ffi.buffer(owner, nbytes)
