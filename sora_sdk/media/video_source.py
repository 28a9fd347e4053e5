"""SoraVideoSource: BGR (or I420) numpy frames pushed by the application."""
from __future__ import annotations

import time
from typing import Optional, Union

import numpy as np

from .._ffi import check, ffi, lib
from .track import SoraTrackInterface, random_track_id


_NDARRAY = np.ndarray
_UINT8 = np.dtype(np.uint8)


def _check_bgr(ndarray) -> np.ndarray:
    if not isinstance(ndarray, np.ndarray):
        raise TypeError("on_captured() expects a numpy.ndarray of shape (height, width, 3) and dtype uint8, got %s"
                        % type(ndarray).__name__)
    if ndarray.dtype != np.uint8:
        raise TypeError("on_captured() expects dtype uint8 (BGR bytes), got %s" % ndarray.dtype)
    if ndarray.ndim != 3 or ndarray.shape[2] != 3:
        raise ValueError("on_captured() expects shape (height, width, 3) in BGR order, got %s" % (ndarray.shape,))
    if ndarray.shape[0] < 1 or ndarray.shape[1] < 1:
        raise ValueError("on_captured() got an empty frame of shape %s" % (ndarray.shape,))
    if ndarray.strides[1:] != (3, 1) or ndarray.strides[0] < ndarray.shape[1] * 3:
        raise ValueError("on_captured() expects packed BGR pixels in rows going down (a crop of a frame is fine; "
                         "use numpy.ascontiguousarray(frame) for other layouts), got strides %s" % (ndarray.strides,))
    return ndarray


def _rows(array: np.ndarray):
    """A pointer to the first row of an array whose rows are packed but may be apart (a crop, padded planes):
    the engine reads each row at its stride, so no copy is made."""
    if array.flags["C_CONTIGUOUS"]:
        return ffi.from_buffer(array)
    return ffi.cast("const uint8_t *", array.__array_interface__["data"][0])


class SoraVideoSource(SoraTrackInterface):
    """A video track fed with `on_captured(frame)`; create it with `Sora.create_video_source()`.

    The frame is copied during the call, so the caller may reuse its array at
    once; the source's own thread converts it to I420 and hands it to every
    connection sending the source. Frames are stamped with the engine clock
    when they arrive.
    """

    def __init__(self, context) -> None:
        super().__init__("video", random_track_id())
        self._context = context
        out = ffi.new("sora_video_source **")
        check(lib.sora_video_source_create(context.ptr, out), "create video source")
        self._ptr = out[0]
        self._black: Optional[np.ndarray] = None
        self._size = (0, 0)

    @property
    def _handle(self):
        return self._ptr

    def on_captured(self, ndarray, timestamp: Union[float, int, None] = None) -> None:
        """Send one BGR frame (H x W x 3 uint8). `timestamp`: seconds (float) or microseconds (int).

        The call copies the frame and returns; the conversion to I420 runs on the source's own thread."""
        # The common case in as few steps as possible: the call runs on the application's capture thread, often
        # with cold caches, where every Python operation costs.
        if (timestamp is None and type(ndarray) is _NDARRAY and ndarray.dtype is _UINT8 and self._enabled
                and ndarray.flags.c_contiguous):
            shape = ndarray.shape
            if len(shape) == 3 and shape[2] == 3 and shape[0] and shape[1]:
                height, width = shape[0], shape[1]
                self._size = (width, height)
                context = self._context
                if context._acquire():
                    try:
                        rc = lib.sora_video_source_push_bgr(self._ptr, ffi.from_buffer(ndarray), width, height,
                                                            width * 3, -1)
                    finally:
                        context._release()
                    if rc < 0:
                        check(rc, "on_captured")
                    return
        frame = _check_bgr(ndarray)
        if timestamp is None:
            ts_us = -1  # now (the engine stamps frames when they enter it)
        elif isinstance(timestamp, float):
            ts_us = int(timestamp * 1e6)
        elif isinstance(timestamp, int):
            ts_us = timestamp
        else:
            raise TypeError("timestamp must be float seconds or int microseconds, got %s" % type(timestamp).__name__)
        height, width = frame.shape[0], frame.shape[1]
        self._size = (width, height)
        if not self._enabled:
            if self._black is None or self._black.shape != frame.shape:
                self._black = np.zeros_like(frame)
            frame = self._black
        with self._context.use():
            check(lib.sora_video_source_push_bgr(self._ptr, _rows(frame), width, height, frame.strides[0],
                                                 ts_us), "on_captured")

    async def capture(self, ndarray, timestamp: Union[float, int, None] = None) -> None:
        """on_captured() on a worker thread, for coroutines that must not spend the conversion's time on their
        event loop (additive API)."""
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.on_captured, ndarray, timestamp)

    def on_captured_i420(self, y, u, v, timestamp: Union[float, int, None] = None) -> None:
        """Send one I420 frame given as three uint8 planes (additive API: skips the BGR conversion)."""
        planes = []
        for name, plane in (("y", y), ("u", u), ("v", v)):
            if not isinstance(plane, np.ndarray) or plane.dtype != np.uint8 or plane.ndim != 2:
                raise TypeError("on_captured_i420() plane %s must be a 2-D uint8 numpy array" % name)
            if plane.strides[1] != 1 or plane.strides[0] < plane.shape[1]:
                raise ValueError("on_captured_i420() plane %s must have contiguous rows going down (a row stride "
                                 ">= its width), got strides %s" % (name, plane.strides))
            planes.append(plane)
        height, width = planes[0].shape
        cw, ch = (width + 1) // 2, (height + 1) // 2
        if planes[1].shape != (ch, cw) or planes[2].shape != (ch, cw):
            raise ValueError("on_captured_i420(): u and v must be %dx%d for a %dx%d y plane" % (ch, cw, height, width))
        ts_us = int(time.time() * 1e6) if timestamp is None else int(timestamp * 1e6 if isinstance(timestamp, float) else timestamp)
        self._size = (width, height)
        with self._context.use():
            check(lib.sora_video_source_push_i420(
                self._ptr,
                _rows(planes[0]), planes[0].strides[0],
                _rows(planes[1]), planes[1].strides[0],
                _rows(planes[2]), planes[2].strides[0],
                width, height, ts_us), "on_captured_i420")

    def _frames(self) -> int:
        return self._context.call(lib.sora_video_source_frame_count, self._ptr, closed=0)

    def _media_source_stats(self) -> dict:
        width, height = self._size
        return {"id": "media-source-video", "kind": "video", "trackIdentifier": self.id,
                "width": width, "height": height, "frames": self._frames()}
