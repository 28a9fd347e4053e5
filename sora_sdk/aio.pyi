from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, Union

from . import SoraAudioFrame, SoraAudioSource, SoraConnection, SoraMediaTrack, SoraSignalingErrorCode, Sora
from . import SoraVideoFrame, SoraVideoSource

SEND_THRESHOLD: int
FRAME_CAPACITY: int

class ConnectionFailed(Exception):
    code: SoraSignalingErrorCode
    message: str
    def __init__(self, code: SoraSignalingErrorCode, message: str) -> None: ...

@dataclass(frozen=True)
class Notify:
    text: str
    message: Dict[str, Any]

@dataclass(frozen=True)
class Push:
    text: str
    message: Any

@dataclass(frozen=True)
class Track:
    track: SoraMediaTrack

@dataclass(frozen=True)
class DataChannel:
    label: str

@dataclass(frozen=True)
class Message:
    label: str
    data: bytes

@dataclass(frozen=True)
class Switched:
    text: str

@dataclass(frozen=True)
class Disconnected:
    code: SoraSignalingErrorCode
    message: str

Event = Union[Notify, Push, Track, DataChannel, Message, Switched, Disconnected]

class AsyncConnection:
    connection: SoraConnection
    def tracks(self) -> AsyncIterator[SoraMediaTrack]: ...
    def frames(self, track: SoraMediaTrack, *, capacity: int = ..., format: str = ...
               ) -> AsyncIterator[Union[SoraVideoFrame, SoraAudioFrame]]: ...
    def dropped(self, track: SoraMediaTrack) -> int: ...
    def events(self) -> AsyncIterator[Event]: ...
    def messages(self, label: str) -> AsyncIterator[Tuple[str, bytes]]: ...
    async def send(self, label: str, data: bytes, *, threshold: int = ...) -> bool: ...
    async def get_stats(self) -> List[Dict[str, Any]]: ...
    async def disconnect(self) -> None: ...
    @property
    def ended(self) -> Optional[Disconnected]: ...
    async def __aenter__(self) -> AsyncConnection: ...
    async def __aexit__(self, *exc: Any) -> None: ...

class AsyncSora:
    sora: Sora
    def __init__(self, **kwargs: Any) -> None: ...
    def create_video_source(self) -> SoraVideoSource: ...
    def create_audio_source(self, channels: int, sample_rate: int) -> SoraAudioSource: ...
    async def connect(self, **kwargs: Any) -> AsyncConnection: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> AsyncSora: ...
    async def __aexit__(self, *exc: Any) -> None: ...
