"""Receiving video: SoraVideoSink delivers decoded frames of a remote track as numpy arrays."""
from __future__ import annotations

import numpy as np

from .._ffi import lib
from ..callbacks import CallbackProperty, invoke
from .sink import EngineSink, SinkBase, frame_view


class SoraVideoFrame:
    """One decoded frame. `data()` is a zero-copy (H, W, 3) BGR view.

    The view keeps the frame's memory alive for as long as it (or any array
    derived from it) exists, so it stays valid after the callback returns. Use
    `data().copy()` to get an independent array.
    """

    def __new__(cls, *args, **kwargs):
        if not kwargs.pop("_internal", False):
            raise TypeError("SoraVideoFrame has no public constructor")
        return super().__new__(cls)

    def __init__(self, buffer, width: int, height: int, fmt: str, timestamp_us: int, *, _internal=False) -> None:
        self._buffer = buffer
        self._width = width
        self._height = height
        self._format = fmt
        self._timestamp_us = timestamp_us

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    @property
    def format(self) -> str:
        """"bgr" (default) or "i420"."""
        return self._format

    @property
    def timestamp_us(self) -> int:
        """Engine presentation time in microseconds (-1 if unknown)."""
        return self._timestamp_us

    def data(self) -> np.ndarray:
        """BGR frames: (height, width, 3) uint8. I420 frames: (height * 3 // 2, width) uint8 (Y then U, V)."""
        flat = np.frombuffer(self._buffer, dtype=np.uint8)
        if self._format == "bgr":
            return flat.reshape(self._height, self._width, 3)
        if self._width % 2 == 0 and self._height % 2 == 0:
            return flat.reshape(self._height * 3 // 2, self._width)
        return flat

    def __reduce__(self):
        # A copy of the pixels: the frame's own memory belongs to the engine and cannot travel.
        return (_new_video_frame, (bytes(self._buffer), self._width, self._height, self._format,
                                   self._timestamp_us))

    def planes(self):
        """I420 frames only: (y, u, v) zero-copy views."""
        if self._format != "i420":
            raise ValueError("planes() is for I420 frames; this frame is BGR")
        w, h = self._width, self._height
        cw, ch = (w + 1) // 2, (h + 1) // 2
        flat = np.frombuffer(self._buffer, dtype=np.uint8)
        y = flat[: w * h].reshape(h, w)
        u = flat[w * h: w * h + cw * ch].reshape(ch, cw)
        v = flat[w * h + cw * ch: w * h + 2 * cw * ch].reshape(ch, cw)
        return y, u, v


def _new_video_frame(pixels: bytes, width: int, height: int, fmt: str, timestamp_us: int) -> SoraVideoFrame:
    return SoraVideoFrame(pixels, width, height, fmt, timestamp_us, _internal=True)


class SoraVideoSinkImpl(SinkBase):
    """Decodes a remote video track; `on_frame(SoraVideoFrame)` runs on this sink's own thread.

    Additive keywords: `format="bgr"|"i420"`, `capacity` (frames queued before
    the oldest is dropped; the official queue is unbounded). `dropped` counts drops.
    """

    on_frame = CallbackProperty("on_frame", "Called with each SoraVideoFrame, on this sink's own thread.")

    def __init__(self, track, format: str = "bgr", capacity: int = 2) -> None:
        super().__init__(track, "video", "SoraVideoSink")
        if format not in ("bgr", "i420"):
            raise ValueError('format must be "bgr" or "i420"')
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError("capacity must be an int >= 1")
        self._format = format
        self._capacity = capacity
        self._attach()

    def _bind(self, context, peer, track_id: int) -> None:
        fmt = lib.SORA_SINK_VIDEO_I420 if self._format == "i420" else lib.SORA_SINK_VIDEO_BGR
        self._engine = EngineSink(context, peer, track_id, fmt, self._on_event, capacity=self._capacity)

    def _on_event(self, event) -> None:
        buffer = frame_view(event, event.size)
        if "on_frame" in self._callbacks:
            invoke(self, "on_frame", SoraVideoFrame(buffer, event.i0, event.i1, self._format, event.i2,
                                                    _internal=True))


class SoraVideoSink(SoraVideoSinkImpl):
    """As the official wrapper: keeps its track alive for as long as the sink lives."""

    def __init__(self, track, *args, **kwargs) -> None:
        super().__init__(track, *args, **kwargs)
        self.__track = track
