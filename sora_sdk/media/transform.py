"""Encoded-frame transforms: the official `SoraFrameTransformer` family.

A transformer sees every encoded frame of a stream before it is sent (set it with
`create_connection(audio_frame_transformer=..., video_frame_transformer=...)`) or after it is
received and before it is decoded (`SoraMediaTrack.set_frame_transformer(t)` inside `on_track`).
`on_transform(frame)` runs on the transform's own thread; the application changes the frame with
`set_data()` (and `rtp_timestamp`) and gives it back with `transformer.enqueue(frame)`, now or later
from any thread. Unlike the official SDK nothing is lost or crashes when `on_transform` is unset or
raises: a frame that was not enqueued by then goes on unchanged. A frame that is dropped without
enqueue is simply not sent (its memory is released when the object is collected).

Each place a transformer is attached gets its own engine transform; one Python transformer can
serve several streams. The engine cuts the branch between encoder and payloader (send) or
depayloader and decoder (receive; per sink, so a track with two sinks transforms each frame twice).
Simulcast layers are not transformed.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import List, Optional

import numpy as np

from .._ffi import EventRouter, check, ffi, lib
from ..callbacks import CallbackProperty
from ..enums import SoraTransformableAudioFrameType, SoraTransformableFrameDirection
from ..errors import SoraInvalidState

log = logging.getLogger("sora_sdk")

_EMPTY_U32 = np.zeros(0, dtype=np.uint32)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
for _a in (_EMPTY_U32, _EMPTY_I64):
    _a.setflags(write=False)


class EngineTransform:
    """Owns one `sora_transform` of a context; frames arrive on its thread."""

    def __init__(self, context, transformer: "SoraFrameTransformer") -> None:
        self._context = context
        self._transformer = transformer
        self._router = EventRouter(self._on_event)
        out = ffi.new("sora_transform **")
        with context.use() as ctx:
            check(lib.sora_transform_create(ctx, self._router.callbacks, out), "create frame transform")
        self.ptr = out[0]
        self._lock = threading.Lock()
        self._closed = False

    def _on_event(self, event) -> None:
        if event.type == lib.SORA_EVENT_ENCODED_FRAME:
            self._transformer._deliver(self, event)

    def short_circuit(self) -> None:
        with self._lock:
            if not self._closed:
                lib.sora_transform_short_circuit(self.ptr)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._context.call(lib.sora_transform_destroy, self.ptr)  # a closed context destroyed it already


class SoraTransformableFrame:
    """One encoded frame handed to `on_transform`; give it back with `transformer.enqueue(frame)`."""

    def __new__(cls, *args, **kwargs):
        if not kwargs.pop("_internal", False):
            raise TypeError("%s has no public constructor" % cls.__name__)
        return super().__new__(cls)

    def __init__(self, engine: EngineTransform, event, *, _internal: bool = False) -> None:
        info = ffi.new("sora_encoded_frame_info *")
        check(lib.sora_transform_frame_info(event.ref, info), "frame info")
        self._engine = engine
        # Owned until enqueue; released by the collector if the application drops the frame.
        self._ref = ffi.gc(ffi.cast("void *", event.ref), lib.sora_c_release)
        self._ptr, self._size = event.ptr, event.size
        self._data: Optional[np.ndarray] = None
        self._new: Optional[bytes] = None
        self._lock = threading.Lock()
        self._info = info
        self._payload_type = info.payload_type
        self._ssrc = info.ssrc
        self._rtp_timestamp = info.rtp_timestamp
        self._direction = SoraTransformableFrameDirection(info.direction)
        self._mime_type = ffi.string(info.mime_type).decode("ascii", "replace") if info.mime_type != ffi.NULL else ""

    # ---- data ----
    def get_data(self) -> np.ndarray:
        """The frame's bytes as a read-only 1-D uint8 array (a copy that stays valid after enqueue)."""
        with self._lock:
            if self._data is None:
                if self._ref is None:
                    raise SoraInvalidState("the frame was already given back with enqueue()")
                raw = self._new if self._new is not None else ffi.buffer(self._ptr, self._size)[:]
                self._data = np.frombuffer(raw, dtype=np.uint8)
            return self._data

    def set_data(self, data) -> None:
        """Replace the frame's bytes: a 1-D uint8 numpy array (bytes-like objects are accepted too)."""
        if isinstance(data, np.ndarray):
            if data.dtype != np.uint8 or data.ndim != 1:
                raise ValueError("set_data() expects a 1-D uint8 array, got %s of shape %s" % (data.dtype, data.shape))
            raw = data.tobytes()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        else:
            raise TypeError("set_data() expects a numpy uint8 array, got %s" % type(data).__name__)
        with self._lock:
            if self._ref is None:
                raise SoraInvalidState("the frame was already given back with enqueue()")
            self._new = raw
            self._data = None

    # ---- metadata ----
    @property
    def payload_type(self) -> int:
        return self._payload_type

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @property
    def rtp_timestamp(self) -> int:
        return self._rtp_timestamp

    @rtp_timestamp.setter
    def rtp_timestamp(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
            raise ValueError("rtp_timestamp must be an int in 0..2**32-1, got %r" % (value,))
        self._rtp_timestamp = value

    @property
    def direction(self) -> SoraTransformableFrameDirection:
        return self._direction

    @property
    def mime_type(self) -> str:
        return self._mime_type

    @property
    def mine_type(self) -> str:
        """The pre-2026.1 spelling of `mime_type`."""
        return self._mime_type

    # ---- giving it back ----
    def _give_back(self) -> None:
        with self._lock:
            ref, self._ref = self._ref, None
            data = self._new
        if ref is None:
            raise SoraInvalidState("the frame was already given back with enqueue()")
        ffi.gc(ref, None)  # the engine owns it again
        if data is None:
            rc = lib.sora_transform_enqueue(self._engine.ptr, ref, ffi.NULL, 0, self._rtp_timestamp)
        else:
            rc = lib.sora_transform_enqueue(self._engine.ptr, ref, ffi.from_buffer(data), len(data),
                                            self._rtp_timestamp)
        if rc < 0 and rc != lib.SORA_ERR_INVALID_STATE:  # INVALID_STATE: the stream ended meanwhile
            check(rc, "enqueue")

    @property
    def _pending(self) -> bool:
        return self._ref is not None

    def __repr__(self) -> str:
        return "<%s %s %s %d bytes rtp_timestamp=%d>" % (type(self).__name__, self._direction.name, self._mime_type,
                                                         self._size, self._rtp_timestamp)


class SoraTransformableAudioFrame(SoraTransformableFrame):
    def __init__(self, engine: EngineTransform, event, *, _internal: bool = False) -> None:
        super().__init__(engine, event, _internal=_internal)
        receiving = self._direction == SoraTransformableFrameDirection.RECEIVER
        self._receive_time = int(time.time() * 1e6) if receiving else None

    @property
    def contributing_sources(self) -> np.ndarray:
        return _EMPTY_U32

    @property
    def sequence_number(self) -> Optional[int]:
        return None

    @property
    def absolute_capture_timestamp(self) -> Optional[int]:
        return None

    @property
    def type(self) -> SoraTransformableAudioFrameType:
        return SoraTransformableAudioFrameType.SPEECH if self._size else SoraTransformableAudioFrameType.EMPTY

    @property
    def audio_level(self) -> Optional[int]:
        return None

    @property
    def receive_time(self) -> Optional[int]:
        return self._receive_time


class SoraTransformableVideoFrame(SoraTransformableFrame):
    def __init__(self, engine: EngineTransform, event, *, _internal: bool = False) -> None:
        super().__init__(engine, event, _internal=_internal)
        self._key = bool(self._info.key_frame)
        self._width, self._height = self._info.width, self._info.height

    @property
    def is_key_frame(self) -> bool:
        return self._key

    @property
    def frame_id(self) -> Optional[int]:
        return None

    @property
    def frame_dependencies(self) -> np.ndarray:
        return _EMPTY_I64

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    @property
    def spatial_index(self) -> int:
        return 0

    @property
    def temporal_index(self) -> int:
        return 0

    @property
    def contributing_sources(self) -> np.ndarray:
        return _EMPTY_U32


class SoraFrameTransformer:
    """Base of the audio and video transformers: `on_transform`, `enqueue`, `start_short_circuiting`."""

    _kind = ""
    _frame_class = SoraTransformableFrame

    on_transform = CallbackProperty("on_transform", "Called with each encoded frame (on the transform's thread); "
                                                    "give the frame back with enqueue().")

    def __init__(self) -> None:
        self._callbacks = {}
        self._lock = threading.Lock()
        self._engines: List[EngineTransform] = []
        self._short_circuit = False
        self._warned = False

    def enqueue(self, frame: SoraTransformableFrame) -> None:
        """Give a frame (changed or not) back to the engine; the frame must not be used afterwards."""
        if not isinstance(frame, SoraTransformableFrame):
            raise TypeError("enqueue() expects a frame from on_transform, got %s" % type(frame).__name__)
        frame._give_back()

    def start_short_circuiting(self) -> None:
        """From now on frames go on unchanged without calling on_transform."""
        with self._lock:
            self._short_circuit = True
            engines = list(self._engines)
        for engine in engines:
            engine.short_circuit()

    # ---- engine side ----
    def _attach(self, context) -> EngineTransform:
        engine = EngineTransform(context, self)
        with self._lock:
            self._engines.append(engine)
            short = self._short_circuit
        if short:
            engine.short_circuit()
        return engine

    def _detach(self, engine: EngineTransform) -> None:
        engine.close()
        with self._lock:
            if engine in self._engines:
                self._engines.remove(engine)

    def _deliver(self, engine: EngineTransform, event) -> None:
        try:
            frame = self._frame_class(engine, event, _internal=True)
        except Exception:
            log.exception("cannot build a transformable frame; the frame goes on unchanged")
            lib.sora_transform_enqueue(engine.ptr, event.ref, ffi.NULL, 0, 0)
            return
        callback = self._callbacks.get("on_transform")
        raised = False
        if callback is not None:
            try:
                callback(frame)
            except Exception:
                raised = True
                log.exception("exception raised in %s.on_transform (the frame goes on unchanged)",
                              type(self).__name__)
        elif not self._warned:
            self._warned = True
            log.warning("%s has no on_transform: frames go on unchanged", type(self).__name__)
        if frame._pending and (callback is None or raised):
            frame._give_back()

    def __del__(self) -> None:
        engines = getattr(self, "_engines", None) or []
        for engine in list(engines):
            try:
                engine.close()
            except Exception:
                pass


class SoraAudioFrameTransformer(SoraFrameTransformer):
    """Transforms encoded audio (Opus) frames."""

    _kind = "audio"
    _frame_class = SoraTransformableAudioFrame


class SoraVideoFrameTransformer(SoraFrameTransformer):
    """Transforms encoded video frames."""

    _kind = "video"
    _frame_class = SoraTransformableVideoFrame
