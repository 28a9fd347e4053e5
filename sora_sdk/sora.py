"""Sora: the factory of connections, sources and the engine they share."""
from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import List, Optional

from . import _reaper
from . import codec as codec_mod
from .callbacks import in_callback
from ._ffi import ffi, lib
from .connect_message import default_environment, normalize_connection_options
from .connection import SoraConnection
from .context import Context
from .media.audio_source import SoraAudioSource
from .media.transform import SoraAudioFrameTransformer, SoraVideoFrameTransformer
from .media.video_source import SoraVideoSource
from .version import VERSION

log = logging.getLogger("sora_sdk")
_live = set()  # _SoraCore objects not closed yet (closed at exit)
_live_lock = threading.Lock()


def engine_version() -> str:
    return ffi.string(lib.sora_c_engine_version()).decode()


def _identity() -> dict:
    return {
        "sora_client": "Sora Python SDK %s (sora_sdk on GStreamer)" % VERSION,
        "libwebrtc": engine_version(),
        "environment": default_environment(),
        "user_agent": "Mozilla 5.0 (Sora Python SDK/%s)" % VERSION,
    }


class _SoraCore:
    """What a Sora instance owns: the engine context (with its dispatcher thread) and its live connections.

    Connections refer to this, not to the Sora object, so that dropping the Sora object (once no connection
    object is left either) can close it.
    """

    def __init__(self, openh264, video_codec_preference) -> None:
        self._openh264 = openh264
        self._video_codec_preference = video_codec_preference
        self._context = Context()
        self._connections = []  # connection cores that called connect() and have not ended
        self._lock = threading.Lock()
        self._closing = False
        self._closed = threading.Event()
        with _live_lock:
            _live.add(self)

    @property
    def closing(self) -> bool:
        return self._closing

    def _register(self, connection) -> bool:
        """Count a connection that starts connecting; False once closing (it must not start)."""
        with self._lock:
            if self._closing:
                return False
            self._connections.append(connection)
            return True

    def _unregister(self, connection) -> None:
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)

    def begin_close(self) -> bool:
        """Refuse new work from now on; True for the one caller that must then run finish_close()."""
        with self._lock:
            if self._closing:
                return False
            self._closing = True
            return True

    def finish_close(self) -> None:
        """End every connection (each with its one on_disconnect), then destroy the engine context."""
        try:
            with self._lock:
                connections = list(self._connections)
            for connection in connections:  # all at once, then wait for each
                connection._post(connection._start_disconnect)
            for connection in connections:
                try:
                    connection.wait_ended()
                except Exception:
                    log.exception("disconnect during Sora.close() failed")
            self._context.close()
        finally:
            with _live_lock:
                _live.discard(self)
            self._closed.set()

    def close(self, wait: bool = True) -> None:
        """Close (idempotent). With `wait`, returns once closed (another thread's close included, bounded)."""
        if self.begin_close():
            self.finish_close()
        elif wait:
            self._closed.wait(30.0)


class Sora:
    """Owns the media engine, one dispatcher thread and everything created from it.

    Additive to the official API: `close()` and use as a context manager;
    `close()` disconnects every live connection first. Dropping the last reference to a Sora object (and to
    every connection made from it) closes it in the background, as the official destructor does.
    """

    def __init__(self, openh264: Optional[str] = None, video_codec_preference=None,
                 force_i420_conversion: Optional[bool] = None, field_trials: Optional[str] = None) -> None:
        if openh264 is not None:
            if not isinstance(openh264, str):
                raise TypeError("openh264 must be a str path or None, got %s" % type(openh264).__name__)
            codec_mod._load_openh264(openh264)  # raises ValueError naming the path
            codec_mod.bind_openh264(openh264)  # the engine's H.264 encoder uses this very library
        if video_codec_preference is not None and not isinstance(video_codec_preference,
                                                                 codec_mod.SoraVideoCodecPreference):
            raise TypeError("video_codec_preference must be a SoraVideoCodecPreference or None")
        if force_i420_conversion is not None and not isinstance(force_i420_conversion, bool):
            raise TypeError("force_i420_conversion must be a bool or None")
        if field_trials is not None and not isinstance(field_trials, str):
            raise TypeError("field_trials must be a str or None")
        if video_codec_preference is not None:
            capability = codec_mod.get_video_codec_capability(openh264)
            errors = codec_mod.validate_video_codec_preference(video_codec_preference, capability)
            if errors:
                raise ValueError("invalid video_codec_preference: " + "; ".join(errors))
        self._force_i420_conversion = force_i420_conversion
        self._field_trials = field_trials
        self._identity = _identity()
        self._core = _SoraCore(openh264, video_codec_preference)
        self._context = self._core._context
        weakref.finalize(self, _reaper.later, self._core.close).atexit = False

    # ---- factory methods ----
    def create_connection(self, signaling_urls, role, channel_id, client_id=None, bundle_id=None, metadata=None,
                          signaling_notify_metadata=None, audio_source=None, video_source=None,
                          audio_frame_transformer=None, video_frame_transformer=None, audio=None, video=None,
                          audio_codec_type=None, video_codec_type=None, video_bit_rate=None, audio_bit_rate=None,
                          video_vp9_params=None, video_av1_params=None, video_h264_params=None,
                          video_h265_params=None, audio_opus_params=None, simulcast=None, spotlight=None,
                          spotlight_number=None, simulcast_rid=None, simulcast_request_rid=None,
                          spotlight_focus_rid=None, spotlight_unfocus_rid=None, forwarding_filter=None,
                          forwarding_filters=None, data_channels=None, data_channel_signaling=None,
                          ignore_disconnect_websocket=None, data_channel_signaling_timeout=None,
                          disconnect_wait_timeout=None, websocket_close_timeout=None,
                          websocket_connection_timeout=None, audio_streaming_language_code=None, insecure=None,
                          client_cert=None, client_key=None, ca_cert=None, proxy_url=None, proxy_username=None,
                          proxy_password=None, proxy_agent=None, degradation_preference=None,
                          user_agent=None) -> SoraConnection:
        """Create a connection (not connected yet: call `connect()`). Parameters as in the official SDK."""
        args = dict(locals())
        del args["self"]
        self._check_open()
        for name in ("audio_source", "video_source"):
            source = args[name]
            if source is not None:
                expected = SoraAudioSource if name == "audio_source" else SoraVideoSource
                if not isinstance(source, expected):
                    raise TypeError("%s must be a %s created by Sora, got %s"
                                    % (name, expected.__name__, type(source).__name__))
                if source._context is not self._context:
                    raise ValueError("%s was created by another Sora instance" % name)
        for name, expected in (("audio_frame_transformer", SoraAudioFrameTransformer),
                               ("video_frame_transformer", SoraVideoFrameTransformer)):
            if args[name] is not None and not isinstance(args[name], expected):
                raise TypeError("%s must be a %s, got %s" % (name, expected.__name__, type(args[name]).__name__))
        options = normalize_connection_options(**args)
        return SoraConnection(self, options, identity=self._identity, _internal=True)

    def create_audio_source(self, channels: int, sample_rate: int) -> SoraAudioSource:
        self._check_open()
        return SoraAudioSource(self._context, channels, sample_rate)

    def create_video_source(self) -> SoraVideoSource:
        self._check_open()
        return SoraVideoSource(self._context)

    def create_libcamera_source(self, width: int, height: int, fps: int, native_frame_output: bool,
                                controls=None):
        if controls is not None:
            for control in controls:
                if not (isinstance(control, tuple) and len(control) == 2
                        and all(isinstance(x, str) for x in control)):
                    raise ValueError("Each control must be a tuple of (name, value)")
        raise RuntimeError("Libcamera is not supported on this platform")

    # ---- lifetime ----
    def _check_open(self) -> None:
        if self._core.closing:
            from .errors import SoraInvalidState

            raise SoraInvalidState("this Sora instance is closed")

    def close(self) -> None:
        """Disconnect every connection, then stop the engine (idempotent; legal anywhere, callbacks included).

        Outside callbacks it returns once every on_disconnect has run and the engine has stopped. Inside a
        callback (whose thread the shutdown may need) it returns at once and a helper thread finishes.
        """
        if not self._core.begin_close():
            if not in_callback():
                self._core.close(wait=True)
            return
        if in_callback() or self._context.on_dispatcher_thread():
            threading.Thread(target=self._core.finish_close, name="sora-close", daemon=True).start()
        else:
            self._core.finish_close()

    def __enter__(self) -> "Sora":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    # The dispatcher is a native thread: it must be stopped before the interpreter goes away.
    with _live_lock:
        cores = list(_live)
    for core in cores:
        try:
            core.close()
        except Exception:
            log.exception("closing a Sora instance at exit failed")
