"""SoraAudioSource: int16 samples pushed by the application."""
from __future__ import annotations

import numpy as np

from .._ffi import check, ffi, lib
from .track import SoraTrackInterface, random_track_id


class SoraAudioSource(SoraTrackInterface):
    """An audio track fed with `on_data(...)`; create it with `Sora.create_audio_source(channels, sample_rate)`."""

    def __init__(self, context, channels: int, sample_rate: int) -> None:
        super().__init__("audio", random_track_id())
        if isinstance(channels, bool) or not isinstance(channels, int):
            raise TypeError("channels must be an int, got %s" % type(channels).__name__)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
            raise TypeError("sample_rate must be an int, got %s" % type(sample_rate).__name__)
        self._context = context
        self._channels = channels
        self._sample_rate = sample_rate
        out = ffi.new("sora_audio_source **")
        check(lib.sora_audio_source_create(context.ptr, channels, sample_rate, out), "create audio source")
        self._ptr = out[0]
        self._samples = 0

    @property
    def _handle(self):
        return self._ptr

    def on_data(self, data, samples_per_channel_or_timestamp=None, timestamp=None) -> None:
        """Send samples.

        Forms (as in the official SDK):
          on_data(ndarray)                     ndarray int16 of shape (samples_per_channel, channels)
          on_data(ndarray, timestamp)          timestamp in seconds
          on_data(data_ptr, samples_per_channel[, timestamp])   address (int) of interleaved int16 samples
        """
        if isinstance(data, np.ndarray):
            if timestamp is not None:
                raise TypeError("on_data(ndarray, timestamp) takes at most one timestamp")
            self._push_array(data)
            return
        if isinstance(data, int) and not isinstance(data, bool):
            count = samples_per_channel_or_timestamp
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError("on_data(data_ptr, samples_per_channel): samples_per_channel must be an int")
            if data == 0 and count:
                raise ValueError("on_data(): data_ptr is NULL")
            if count < 0:
                raise ValueError("on_data(): samples_per_channel must be >= 0")
            self._push(ffi.cast("int16_t *", data), count)
            return
        raise TypeError("on_data() expects a numpy int16 array of shape (samples_per_channel, channels) "
                        "or (data_ptr: int, samples_per_channel: int), got %s" % type(data).__name__)

    def _push_array(self, array: np.ndarray) -> None:
        if array.dtype != np.int16:
            raise TypeError("on_data() expects dtype int16, got %s" % array.dtype)
        if array.ndim != 2:
            raise ValueError("on_data() expects shape (samples_per_channel, channels), got %s" % (array.shape,))
        if array.shape[1] != self._channels:
            raise ValueError("on_data(): this source has %d channel(s), the array has %d"
                             % (self._channels, array.shape[1]))
        if not array.flags["C_CONTIGUOUS"]:
            array = np.ascontiguousarray(array)
        if not self.enabled:
            array = np.zeros_like(array)
        self._push(ffi.cast("int16_t *", ffi.from_buffer(array)), array.shape[0])

    def _push(self, ptr, count: int) -> None:
        with self._context.use():
            check(lib.sora_audio_source_push(self._ptr, ptr, count, -1), "on_data")
        self._samples += count

    def _media_source_stats(self) -> dict:
        return {"id": "media-source-audio", "kind": "audio", "trackIdentifier": self.id,
                "totalSamplesDuration": self._samples / float(self._sample_rate)}
