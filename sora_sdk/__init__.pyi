"""Type stubs of the ``sora_sdk`` package (API of the official Sora Python SDK).

Arrays are typed with ``numpy.typing.NDArray`` of the dtype the SDK uses.
Additive API that the official SDK lacks is marked "additive" below.
"""

import enum
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    overload,
)

import numpy
from numpy.typing import NDArray

__version__: str

# A value the SDK converts to JSON (dict keys must be str; ints must fit a C
# int and floats must be exact float32 values, else TypeError at run time).
_JSONValue = Union[None, bool, int, float, str, List[Any], Dict[str, Any]]

_SoraT = TypeVar("_SoraT", bound="Sora")
_ConnT = TypeVar("_ConnT", bound="SoraConnection")

# ---------------------------------------------------------------------------
# Enums
# ---------------------------------------------------------------------------

class SoraSignalingErrorCode(enum.IntEnum):
    CLOSE_SUCCEEDED = 0
    CLOSE_FAILED = 1
    INTERNAL_ERROR = 2
    INVALID_PARAMETER = 3
    WEBSOCKET_HANDSHAKE_FAILED = 4
    WEBSOCKET_ONCLOSE = 5
    WEBSOCKET_ONERROR = 6
    PEER_CONNECTION_STATE_FAILED = 7
    ICE_FAILED = 8
    DATACHANNEL_CLOSED = 9

class SoraSignalingType(enum.IntEnum):
    WEBSOCKET = 0
    DATACHANNEL = 1

class SoraSignalingDirection(enum.IntEnum):
    SENT = 0
    RECEIVED = 1

class SoraDegradationPreference(enum.IntEnum):
    DISABLED = 0
    BALANCED = 3
    MAINTAIN_FRAMERATE = 1
    MAINTAIN_RESOLUTION = 2

class SoraTrackState(enum.IntEnum):
    LIVE = 0
    ENDED = 1

class SoraLoggingSeverity(enum.IntEnum):
    VERBOSE = 0
    INFO = 1
    WARNING = 2
    ERROR = 3
    NONE = 4

class SoraTransformableFrameDirection(enum.IntEnum):
    UNKNOWN = 0
    RECEIVER = 1
    SENDER = 2

class SoraTransformableAudioFrameType(enum.IntEnum):
    EMPTY = 0
    SPEECH = 1
    CN = 2

class SoraVideoCodecImplementation(enum.IntEnum):
    INTERNAL = 0
    CISCO_OPENH264 = 1
    INTEL_VPL = 2
    NVIDIA_VIDEO_CODEC_SDK = 3
    AMD_AMF = 4
    RASPI_V4L2M2M = 5

class SoraVideoCodecType(enum.IntEnum):
    VP8 = 1
    VP9 = 2
    H264 = 4
    H265 = 5
    AV1 = 3

# ---------------------------------------------------------------------------
# Exceptions (additive: the official SDK raises plain built-in exceptions;
# each of these also derives from the built-in one a caller would catch)
# ---------------------------------------------------------------------------

class SoraError(Exception):
    code: int
    def __init__(self, message: str, code: int = 0) -> None: ...

class SoraInvalidArgument(SoraError, ValueError): ...
class SoraInvalidState(SoraError, RuntimeError): ...
class SoraEngineError(SoraError, RuntimeError): ...
class SoraTimeout(SoraError, TimeoutError): ...
class SoraNotFound(SoraError, LookupError): ...
class SoraUnsupported(SoraError, RuntimeError): ...

# ---------------------------------------------------------------------------
# Module functions
# ---------------------------------------------------------------------------

def enable_libwebrtc_log(arg: SoraLoggingSeverity, /) -> None: ...
def rtc_log(arg0: SoraLoggingSeverity, arg1: str, /) -> None: ...
def get_video_codec_capability(openh264: Optional[str] = None) -> SoraVideoCodecCapability: ...
def create_video_codec_preference_from_implementation(
    arg0: SoraVideoCodecCapability, arg1: SoraVideoCodecImplementation, /
) -> SoraVideoCodecPreference: ...

# ---------------------------------------------------------------------------
# Codec capability / preference
# ---------------------------------------------------------------------------

class SoraVideoCodecCapability:
    class Parameters:
        @property
        def version(self) -> Optional[str]: ...
        @property
        def openh264_path(self) -> Optional[str]: ...
        @property
        def vpl_impl(self) -> Optional[str]: ...
        @property
        def vpl_impl_value(self) -> Optional[int]: ...
        @property
        def nvcodec_gpu_device_name(self) -> Optional[str]: ...
        @property
        def amf_runtime_version(self) -> Optional[str]: ...
        @property
        def amf_embedded_version(self) -> Optional[str]: ...

    class Codec:
        @property
        def type(self) -> SoraVideoCodecType: ...
        @property
        def encoder(self) -> bool: ...
        @property
        def decoder(self) -> bool: ...
        @property
        def parameters(self) -> SoraVideoCodecCapability.Parameters: ...

    class Engine:
        @property
        def name(self) -> SoraVideoCodecImplementation: ...
        @property
        def codecs(self) -> List[SoraVideoCodecCapability.Codec]: ...
        @property
        def parameters(self) -> SoraVideoCodecCapability.Parameters: ...

    @property
    def engines(self) -> List[SoraVideoCodecCapability.Engine]: ...
    def to_json(self) -> Dict[str, Any]: ...
    def unavailable_reasons(self) -> Dict[str, str]:
        """Additive: why engines/codecs are missing, keyed by implementation
        name ("nvidia_video_codec_sdk") or "<implementation>.<codec>"
        ("internal.H265")."""

class SoraVideoCodecPreference:
    class Parameters:
        def __init__(self) -> None: ...

    class Codec:
        @overload
        def __init__(self) -> None: ...
        @overload
        def __init__(
            self,
            type: SoraVideoCodecType,
            encoder: Optional[SoraVideoCodecImplementation] = None,
            decoder: Optional[SoraVideoCodecImplementation] = None,
            parameters: Optional[SoraVideoCodecPreference.Parameters] = None,
        ) -> None: ...
        @property
        def type(self) -> SoraVideoCodecType: ...
        @type.setter
        def type(self, arg: SoraVideoCodecType, /) -> None: ...
        @property
        def encoder(self) -> Optional[SoraVideoCodecImplementation]: ...
        @encoder.setter
        def encoder(self, arg: Optional[SoraVideoCodecImplementation]) -> None: ...
        @property
        def decoder(self) -> Optional[SoraVideoCodecImplementation]: ...
        @decoder.setter
        def decoder(self, arg: Optional[SoraVideoCodecImplementation]) -> None: ...
        @property
        def parameters(self) -> SoraVideoCodecPreference.Parameters: ...
        @parameters.setter
        def parameters(self, arg: SoraVideoCodecPreference.Parameters, /) -> None: ...

    def __init__(self, codecs: Sequence[SoraVideoCodecPreference.Codec] = ...) -> None: ...
    @property
    def codecs(self) -> List[SoraVideoCodecPreference.Codec]: ...
    @codecs.setter
    def codecs(self, arg: Sequence[SoraVideoCodecPreference.Codec], /) -> None: ...
    def to_json(self) -> Dict[str, Any]: ...
    def find(self, arg: SoraVideoCodecType, /) -> Optional[int]: ...
    def get_or_add(self, arg: SoraVideoCodecType, /) -> int: ...
    def has_implementation(self, arg: SoraVideoCodecImplementation, /) -> bool: ...
    def merge(self, arg: SoraVideoCodecPreference, /) -> None: ...

# ---------------------------------------------------------------------------
# Tracks and sources
# ---------------------------------------------------------------------------

class SoraTrackInterface:
    @property
    def kind(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def state(self) -> SoraTrackState: ...
    def set_enabled(self, enable: bool) -> bool: ...

class SoraMediaTrack(SoraTrackInterface):
    @property
    def stream_id(self) -> str: ...
    def set_frame_transformer(self, arg: SoraFrameTransformer, /) -> None: ...

class SoraTransformableFrame:
    def get_data(self) -> NDArray[numpy.uint8]: ...
    def set_data(self, arg: NDArray[numpy.uint8], /) -> None: ...
    @property
    def payload_type(self) -> int: ...
    @property
    def ssrc(self) -> int: ...
    @property
    def rtp_timestamp(self) -> int: ...
    @rtp_timestamp.setter
    def rtp_timestamp(self, arg: int, /) -> None: ...
    @property
    def direction(self) -> SoraTransformableFrameDirection: ...
    @property
    def mime_type(self) -> str: ...
    @property
    def mine_type(self) -> str: ...  # the pre-2026.1 spelling

class SoraTransformableAudioFrame(SoraTransformableFrame):
    @property
    def contributing_sources(self) -> NDArray[numpy.uint32]: ...
    @property
    def sequence_number(self) -> Optional[int]: ...
    @property
    def absolute_capture_timestamp(self) -> Optional[int]: ...
    @property
    def type(self) -> SoraTransformableAudioFrameType: ...
    @property
    def audio_level(self) -> Optional[int]: ...
    @property
    def receive_time(self) -> Optional[int]: ...

class SoraTransformableVideoFrame(SoraTransformableFrame):
    @property
    def is_key_frame(self) -> bool: ...
    @property
    def frame_id(self) -> Optional[int]: ...
    @property
    def frame_dependencies(self) -> NDArray[numpy.int64]: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def spatial_index(self) -> int: ...
    @property
    def temporal_index(self) -> int: ...
    @property
    def contributing_sources(self) -> NDArray[numpy.uint32]: ...

class SoraFrameTransformer:
    def enqueue(self, arg: SoraTransformableFrame, /) -> None: ...
    def start_short_circuiting(self) -> None: ...

class SoraAudioFrameTransformer(SoraFrameTransformer):
    def __init__(self) -> None: ...
    def __del__(self) -> None: ...
    @property
    def on_transform(self) -> Callable[[SoraTransformableAudioFrame], None]: ...
    @on_transform.setter
    def on_transform(self, arg: Callable[[SoraTransformableAudioFrame], None], /) -> None: ...

class SoraVideoFrameTransformer(SoraFrameTransformer):
    def __init__(self) -> None: ...
    def __del__(self) -> None: ...
    @property
    def on_transform(self) -> Callable[[SoraTransformableVideoFrame], None]: ...
    @on_transform.setter
    def on_transform(self, arg: Callable[[SoraTransformableVideoFrame], None], /) -> None: ...

class SoraAudioSource(SoraTrackInterface):
    @overload
    def on_data(self, data: int, samples_per_channel: int, timestamp: float) -> None: ...
    @overload
    def on_data(self, data: int, samples_per_channel: int) -> None: ...
    @overload
    def on_data(self, ndarray: NDArray[numpy.int16], timestamp: float) -> None: ...
    @overload
    def on_data(self, ndarray: NDArray[numpy.int16]) -> None: ...

class SoraVideoSource(SoraTrackInterface):
    @overload
    def on_captured(self, ndarray: NDArray[numpy.uint8]) -> None: ...
    @overload
    def on_captured(self, ndarray: NDArray[numpy.uint8], timestamp: float) -> None: ...
    @overload
    def on_captured(self, ndarray: NDArray[numpy.uint8], timestamp_us: int) -> None: ...
    async def capture(self, ndarray: NDArray[numpy.uint8], timestamp: Union[float, int, None] = None) -> None:
        """Additive: on_captured() on a worker thread, for asyncio code."""
    def on_captured_i420(
        self,
        y: NDArray[numpy.uint8],
        u: NDArray[numpy.uint8],
        v: NDArray[numpy.uint8],
        timestamp: Union[float, int, None] = None,
    ) -> None:
        """Additive: send one I420 frame as three 2-D uint8 planes (float
        timestamp = seconds, int = microseconds, None = now)."""

# ---------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------

class SoraAudioFrame:
    def __getstate__(self) -> Tuple[List[int], int, int, int, Optional[int]]: ...
    def __setstate__(self, arg: Tuple[Sequence[int], int, int, int, Optional[int]], /) -> None: ...
    @property
    def samples_per_channel(self) -> int: ...
    @property
    def num_channels(self) -> int: ...
    @property
    def sample_rate_hz(self) -> int: ...
    @property
    def absolute_capture_timestamp_ms(self) -> Optional[int]: ...
    def data(self) -> NDArray[numpy.int16]: ...

class SoraAudioSinkImpl:
    def __init__(
        self, track: SoraTrackInterface, output_frequency: int = -1, output_channels: int = 0
    ) -> None: ...
    def __del__(self) -> None: ...
    def read(
        self, frames: int = 0, timeout: float = 1
    ) -> Tuple[bool, Optional[NDArray[numpy.int16]]]: ...
    @property
    def on_data(self) -> Optional[Callable[[NDArray[numpy.int16]], None]]: ...
    @on_data.setter
    def on_data(self, arg: Callable[[NDArray[numpy.int16]], None], /) -> None: ...
    @property
    def on_format(self) -> Optional[Callable[[int, int], None]]: ...
    @on_format.setter
    def on_format(self, arg: Callable[[int, int], None], /) -> None: ...
    # additive API
    @property
    def dropped(self) -> int: ...
    def close(self) -> None: ...

class SoraAudioSink(SoraAudioSinkImpl):
    def __init__(
        self, track: SoraTrackInterface, output_frequency: int, output_channels: int
    ) -> None: ...
    def __del__(self) -> None: ...

class SoraAudioStreamSinkImpl:
    def __init__(
        self, track: SoraTrackInterface, output_frequency: int = -1, output_channels: int = 0
    ) -> None: ...
    def __del__(self) -> None: ...
    @property
    def on_frame(self) -> Optional[Callable[[SoraAudioFrame], None]]: ...
    @on_frame.setter
    def on_frame(self, arg: Callable[[SoraAudioFrame], None], /) -> None: ...
    # additive API
    @property
    def dropped(self) -> int: ...
    def close(self) -> None: ...

class SoraAudioStreamSink(SoraAudioStreamSinkImpl):
    def __init__(
        self, track: SoraTrackInterface, output_frequency: int, output_channels: int
    ) -> None: ...
    def __del__(self) -> None: ...

class SoraVAD:
    def __init__(self) -> None: ...
    def analyze(self, frame: SoraAudioFrame) -> float: ...

class SoraVideoFrame:
    def data(self) -> NDArray[numpy.uint8]: ...
    # additive API
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def timestamp_us(self) -> int: ...
    def planes(self) -> Tuple[NDArray[numpy.uint8], NDArray[numpy.uint8], NDArray[numpy.uint8]]: ...

class SoraVideoSinkImpl:
    def __init__(self, track: SoraTrackInterface, format: str = "bgr", capacity: int = 2) -> None: ...
    def __del__(self) -> None: ...
    @property
    def dropped(self) -> int: ...
    def close(self) -> None: ...
    @property
    def on_frame(self) -> Optional[Callable[[SoraVideoFrame], None]]: ...
    @on_frame.setter
    def on_frame(self, arg: Callable[[SoraVideoFrame], None], /) -> None: ...

class SoraVideoSink(SoraVideoSinkImpl):
    def __init__(self, track: SoraTrackInterface, format: str = "bgr", capacity: int = 2) -> None: ...
    def __del__(self) -> None: ...

# ---------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------

class SoraConnection:
    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    def send_data_channel(self, label: str, data: bytes) -> bool: ...
    def get_stats(self) -> str: ...
    def send_rpc(
        self,
        id: Optional[int],
        method: str,
        params: Union[Dict[str, Any], List[Any], None] = None,
    ) -> bool:
        """2026.2: send a JSON-RPC 2.0 request (id=None: a notification) on the
        "rpc" DataChannel."""
    # Additive (not in the official SDK).
    def close(self) -> None:
        """Additive: disconnect() if connected and release the connection."""
    def __enter__(self: _ConnT) -> _ConnT: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...
    @property
    def ice_connection_state(self) -> str:
        """Additive: W3C RTCIceConnectionState ("new", "checking", "connected", ...)."""
    @property
    def connection_state(self) -> str:
        """Additive: W3C RTCPeerConnectionState ("new", "connecting", "connected", ...)."""
    # Callbacks: the getter returns None until one is set.
    @property
    def on_set_offer(self) -> Optional[Callable[[str], None]]: ...
    @on_set_offer.setter
    def on_set_offer(self, arg: Callable[[str], None], /) -> None: ...
    @property
    def on_ws_close(self) -> Optional[Callable[[int, str], None]]: ...
    @on_ws_close.setter
    def on_ws_close(self, arg: Callable[[int, str], None], /) -> None: ...
    @property
    def on_disconnect(self) -> Optional[Callable[[SoraSignalingErrorCode, str], None]]: ...
    @on_disconnect.setter
    def on_disconnect(self, arg: Callable[[SoraSignalingErrorCode, str], None], /) -> None: ...
    @property
    def on_signaling_message(
        self,
    ) -> Optional[Callable[[SoraSignalingType, SoraSignalingDirection, str], None]]: ...
    @on_signaling_message.setter
    def on_signaling_message(
        self, arg: Callable[[SoraSignalingType, SoraSignalingDirection, str], None], /
    ) -> None: ...
    @property
    def on_notify(self) -> Optional[Callable[[str], None]]: ...
    @on_notify.setter
    def on_notify(self, arg: Callable[[str], None], /) -> None: ...
    @property
    def on_push(self) -> Optional[Callable[[str], None]]: ...
    @on_push.setter
    def on_push(self, arg: Callable[[str], None], /) -> None: ...
    @property
    def on_message(self) -> Optional[Callable[[str, bytes], None]]: ...
    @on_message.setter
    def on_message(self, arg: Callable[[str, bytes], None], /) -> None: ...
    @property
    def on_rpc(self) -> Optional[Callable[[bytes], None]]: ...
    @on_rpc.setter
    def on_rpc(self, arg: Callable[[bytes], None], /) -> None: ...
    @property
    def on_switched(self) -> Optional[Callable[[str], None]]: ...
    @on_switched.setter
    def on_switched(self, arg: Callable[[str], None], /) -> None: ...
    @property
    def on_track(self) -> Optional[Callable[[SoraMediaTrack], None]]: ...
    @on_track.setter
    def on_track(self, arg: Callable[[SoraMediaTrack], None], /) -> None: ...
    @property
    def on_data_channel(self) -> Optional[Callable[[str], None]]: ...
    @on_data_channel.setter
    def on_data_channel(self, arg: Callable[[str], None], /) -> None: ...

# ---------------------------------------------------------------------------
# Sora
# ---------------------------------------------------------------------------

class Sora:
    def __init__(
        self,
        openh264: Optional[str] = None,
        video_codec_preference: Optional[SoraVideoCodecPreference] = None,
        force_i420_conversion: Optional[bool] = None,
        field_trials: Optional[str] = None,
    ) -> None: ...
    def create_connection(
        self,
        signaling_urls: List[str],
        role: str,
        channel_id: str,
        client_id: Optional[str] = None,
        bundle_id: Optional[str] = None,
        metadata: Optional[_JSONValue] = None,
        signaling_notify_metadata: Optional[_JSONValue] = None,
        audio_source: Optional[SoraTrackInterface] = None,
        video_source: Optional[SoraTrackInterface] = None,
        audio_frame_transformer: Optional[SoraAudioFrameTransformer] = None,
        video_frame_transformer: Optional[SoraVideoFrameTransformer] = None,
        audio: Optional[bool] = None,
        video: Optional[bool] = None,
        audio_codec_type: Optional[str] = None,
        video_codec_type: Optional[str] = None,
        video_bit_rate: Optional[int] = None,
        audio_bit_rate: Optional[int] = None,
        video_vp9_params: Optional[Dict[str, Any]] = None,
        video_av1_params: Optional[Dict[str, Any]] = None,
        video_h264_params: Optional[Dict[str, Any]] = None,
        video_h265_params: Optional[Dict[str, Any]] = None,
        audio_opus_params: Optional[Dict[str, Any]] = None,
        simulcast: Optional[bool] = None,
        spotlight: Optional[bool] = None,
        spotlight_number: Optional[int] = None,
        simulcast_rid: Optional[str] = None,
        simulcast_request_rid: Optional[str] = None,
        spotlight_focus_rid: Optional[str] = None,
        spotlight_unfocus_rid: Optional[str] = None,
        forwarding_filter: Optional[Dict[str, Any]] = None,
        forwarding_filters: Optional[List[Dict[str, Any]]] = None,
        data_channels: Optional[List[Dict[str, Any]]] = None,
        data_channel_signaling: Optional[bool] = None,
        ignore_disconnect_websocket: Optional[bool] = None,
        data_channel_signaling_timeout: Optional[int] = None,
        disconnect_wait_timeout: Optional[int] = None,
        websocket_close_timeout: Optional[int] = None,
        websocket_connection_timeout: Optional[int] = None,
        audio_streaming_language_code: Optional[str] = None,
        insecure: Optional[bool] = None,
        client_cert: Optional[bytes] = None,
        client_key: Optional[bytes] = None,
        ca_cert: Optional[bytes] = None,
        proxy_url: Optional[str] = None,
        proxy_username: Optional[str] = None,
        proxy_password: Optional[str] = None,
        proxy_agent: Optional[str] = None,
        degradation_preference: Optional[SoraDegradationPreference] = None,
        user_agent: Optional[str] = None,
    ) -> SoraConnection: ...
    def create_audio_source(self, channels: int, sample_rate: int) -> SoraAudioSource: ...
    def create_video_source(self) -> SoraVideoSource: ...
    def create_libcamera_source(
        self,
        width: int,
        height: int,
        fps: int,
        native_frame_output: bool,
        controls: Optional[List[Tuple[str, str]]] = None,
    ) -> SoraTrackInterface: ...
    # Additive (not in the official SDK).
    def close(self) -> None:
        """Additive: disconnect every connection and release the engine."""
    def __enter__(self: _SoraT) -> _SoraT: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...
