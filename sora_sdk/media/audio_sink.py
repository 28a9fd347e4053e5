"""Receiving audio: SoraAudioSink (pull with read()) and SoraAudioStreamSink (10 ms frames pushed)."""
from __future__ import annotations

import threading
import time
from typing import Optional, Tuple

import numpy as np

from .._ffi import ffi, lib
from ..callbacks import CallbackProperty, invoke
from .sink import EngineSink, SinkBase


def _check_format(output_frequency: int, output_channels: int) -> None:
    for name, value in (("output_frequency", output_frequency), ("output_channels", output_channels)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("%s must be an int" % name)
    if output_frequency != -1 and not 8000 <= output_frequency <= 192000:
        raise ValueError("output_frequency must be -1 (keep) or 8000..192000")
    if not 0 <= output_channels <= 8:
        raise ValueError("output_channels must be 0 (keep) or 1..8")


class _AudioSinkBase(SinkBase):
    def __init__(self, track, output_frequency: int, output_channels: int, what: str) -> None:
        super().__init__(track, "audio", what)
        _check_format(output_frequency, output_channels)
        self._rate_req = 0 if output_frequency == -1 else output_frequency
        self._channels_req = output_channels

    def _bind(self, context, peer, track_id: int) -> None:
        self._engine = EngineSink(context, peer, track_id, lib.SORA_SINK_AUDIO_S16, self._on_event,
                                  capacity=50, sample_rate=self._rate_req, channels=self._channels_req)

    def _samples(self, event) -> Tuple[np.ndarray, int, int]:
        rate, channels = event.i0, event.i1
        try:
            data = np.frombuffer(ffi.buffer(event.ptr, event.size), dtype=np.int16).copy()
        finally:
            lib.sora_c_release(event.ref)
        return data.reshape(-1, max(channels, 1)), rate, channels


class SoraAudioSinkImpl(_AudioSinkBase):
    """Buffers decoded audio; `read()` pulls it. `on_format`/`on_data` are also called as it arrives."""

    on_format = CallbackProperty("on_format", "Called with (sample_rate, channels) on the first buffer and on "
                                              "any format change.")
    on_data = CallbackProperty("on_data", "Called with each decoded int16 array (samples, channels).")

    def __init__(self, track, output_frequency: int = -1, output_channels: int = 0) -> None:
        super().__init__(track, output_frequency, output_channels, "SoraAudioSink")
        self._cond = threading.Condition()
        self._chunks = []
        self._buffered = 0
        self._format: Optional[Tuple[int, int]] = None
        self._attach()

    def _on_event(self, event) -> None:
        samples, rate, channels = self._samples(event)
        with self._cond:
            if self._format != (rate, channels):
                if self._format is not None:
                    self._chunks, self._buffered = [], 0  # a new format starts a new buffer
                self._format = (rate, channels)
                changed = True
            else:
                changed = False
            self._chunks.append(samples)
            self._buffered += samples.shape[0]
            limit = rate * 10  # keep at most 10 s
            while self._buffered > limit and self._chunks:
                self._buffered -= self._chunks.pop(0).shape[0]
            self._cond.notify_all()
        if changed:
            invoke(self, "on_format", rate, channels)
        invoke(self, "on_data", samples)

    def read(self, frames: int = 0, timeout: float = 1) -> tuple:
        """(True, int16 array (frames, channels)) or (False, None).

        frames=0 returns everything buffered; frames>0 waits up to `timeout`
        seconds for that many samples per channel. The GIL is released while waiting.
        """
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise ValueError("frames must be an int >= 0")
        deadline = time.monotonic() + float(timeout)
        with self._cond:
            while frames > 0 and self._buffered < frames:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self._buffered < frames:
                        return False, None
            if self._buffered == 0:
                return False, None
            data = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            count = frames or data.shape[0]
            out, rest = data[:count], data[count:]
            self._chunks = [rest] if rest.shape[0] else []
            self._buffered = rest.shape[0]
            return True, np.ascontiguousarray(out)


class SoraAudioSink(SoraAudioSinkImpl):
    """As the official wrapper: keeps its track alive for as long as the sink lives."""

    def __init__(self, track, output_frequency: int = -1, output_channels: int = 0) -> None:
        super().__init__(track, output_frequency, output_channels)
        self.__track = track


class SoraAudioFrame:
    """10 ms of decoded audio. `data()` is (samples_per_channel, num_channels) int16; picklable."""

    def __new__(cls, *args, **kwargs):
        if not kwargs.pop("_internal", False):
            raise TypeError("SoraAudioFrame has no public constructor")
        return super().__new__(cls)

    def __init__(self, samples: np.ndarray, sample_rate: int, timestamp_ms: Optional[int], *,
                 _internal=False) -> None:
        self._samples = samples
        self._rate = sample_rate
        self._ts = timestamp_ms

    @property
    def samples_per_channel(self) -> int:
        return int(self._samples.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self._samples.shape[1])

    @property
    def sample_rate_hz(self) -> int:
        return self._rate

    @property
    def absolute_capture_timestamp_ms(self) -> Optional[int]:
        return self._ts

    def data(self) -> np.ndarray:
        return self._samples

    def __getstate__(self):
        # The official layout: samples as uint16 values, then the scalars.
        return (self._samples.reshape(-1).view(np.uint16).tolist(), self.samples_per_channel,
                self.num_channels, self._rate, self._ts)

    def __setstate__(self, state) -> None:
        values, samples_per_channel, channels, rate, ts = state
        array = np.array(values, dtype=np.uint16).view(np.int16)
        self._samples = array.reshape(samples_per_channel, channels)
        self._rate = rate
        self._ts = ts

    def __reduce__(self):
        return (_new_audio_frame, (), self.__getstate__())


def _new_audio_frame():
    return SoraAudioFrame.__new__(SoraAudioFrame, _internal=True)


class SoraAudioStreamSinkImpl(_AudioSinkBase):
    """Calls `on_frame(SoraAudioFrame)` for every 10 ms of decoded audio, on this sink's thread."""

    on_frame = CallbackProperty("on_frame", "Called with each 10 ms SoraAudioFrame, on this sink's own thread.")

    def __init__(self, track, output_frequency: int = -1, output_channels: int = 0) -> None:
        super().__init__(track, output_frequency, output_channels, "SoraAudioStreamSink")
        self._pending: Optional[np.ndarray] = None
        self._attach()

    def _on_event(self, event) -> None:
        samples, rate, _channels = self._samples(event)
        if self._pending is not None and self._pending.shape[1] == samples.shape[1]:
            samples = np.concatenate((self._pending, samples))
        step = max(rate // 100, 1)
        whole = samples.shape[0] // step * step
        self._pending = samples[whole:] if whole < samples.shape[0] else None
        now_ms = int(time.time() * 1000)
        for start in range(0, whole, step):
            if self._closed:
                break
            invoke(self, "on_frame", SoraAudioFrame(samples[start:start + step], rate, now_ms, _internal=True))


class SoraAudioStreamSink(SoraAudioStreamSinkImpl):
    """As the official wrapper: keeps its track alive for as long as the sink lives."""

    def __init__(self, track, output_frequency: int = -1, output_channels: int = 0) -> None:
        super().__init__(track, output_frequency, output_channels)
        self.__track = track
