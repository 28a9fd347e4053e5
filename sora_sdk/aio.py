"""asyncio on top of the callback API: await connections, async-iterate tracks, frames, messages and events.

The callbacks of `Sora` run on the SDK's own threads (the dispatcher, one thread per sink). Everything here
hands their results to the event loop without ever blocking those threads: each iterator has a feed that the
SDK's threads append to under a lock and that wakes the loop (call_soon_threadsafe) only when the iterator is
waiting. Frame feeds are bounded: when one is full its oldest frame is dropped and counted
(`AsyncConnection.dropped(track)`); messages and events are never dropped.

    async with AsyncSora() as sora:
        conn = await sora.connect(signaling_urls=[url], role="recvonly", channel_id="c")
        async for track in conn.tracks():
            ...

Calls that block in the callback API (`disconnect()`, `get_stats()`, closing the `Sora`) run on a worker
thread here. `SoraVideoSource.on_captured()` is not wrapped: it copies the frame and returns (about 0.1 ms
for 640x480 and 0.3 ms for 1280x720 on the machine the project is built on; the conversion runs on the source's
own thread), which a coroutine can afford at 30 fps; `await video.capture(frame)` is the same call on a worker
thread for larger frames.
"""
from __future__ import annotations

import asyncio
import collections
import json
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Deque, Dict, List, Optional, Tuple

from .connection import SoraConnection
from .enums import SoraSignalingErrorCode
from .media.audio_sink import SoraAudioStreamSink
from .media.track import SoraMediaTrack
from .media.video_sink import SoraVideoSink
from .sora import Sora

__all__ = ["AsyncSora", "AsyncConnection", "ConnectionFailed", "Notify", "Push", "Track", "DataChannel", "Message",
           "Switched", "Disconnected"]

SEND_THRESHOLD = 1 << 20  # send() waits while more than this many bytes are queued on the channel
FRAME_CAPACITY = 8  # frames an iterator holds before it drops the oldest


class ConnectionFailed(Exception):
    """The connection ended before `connection.created` for it arrived: `code` and `message` of on_disconnect."""

    def __init__(self, code: SoraSignalingErrorCode, message: str) -> None:
        super().__init__("%s: %s" % (getattr(code, "name", code), message))
        self.code = code
        self.message = message


# ---- typed events ------------------------------------------------------------------------------------------
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


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _wake(future: "asyncio.Future") -> None:
    if not future.done():
        future.set_result(None)


class _Feed:
    """Items from any thread to one async iterator on `loop`; with `capacity`, the oldest item goes when full."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = 0) -> None:
        self._loop = loop
        self._capacity = capacity
        self._items: Deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._waiter: Optional[asyncio.Future] = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._lock:
            if self._closed:
                return
            self._items.append(item)
            if self._capacity and len(self._items) > self._capacity:
                self._items.popleft()
                self.dropped += 1
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._call(waiter)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._call(waiter)

    def _call(self, waiter: "asyncio.Future") -> None:
        try:
            self._loop.call_soon_threadsafe(_wake, waiter)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def __aiter__(self) -> "_Feed":
        return self

    async def __anext__(self) -> Any:
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    raise StopAsyncIteration
                waiter = self._waiter = self._loop.create_future()
            await waiter


class AsyncConnection:
    """One connection driven from asyncio; made by `AsyncSora.connect()`. `connection` is the callback-API
    SoraConnection underneath (its callbacks belong to this object)."""

    def __init__(self, connection: SoraConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.connection = connection
        self._loop = loop
        self._lock = threading.Lock()
        self._tracks: List[SoraMediaTrack] = []
        self._track_feeds: List[_Feed] = []
        self._event_feeds: List[_Feed] = []
        self._message_feeds: List[Tuple[str, _Feed]] = []
        self._frame_feeds: Dict[int, List[Tuple[_Feed, Any]]] = {}  # id(track) -> [(feed, sink)]
        self._created: asyncio.Future = loop.create_future()
        self._ended = threading.Event()
        self._end: Optional[Disconnected] = None
        connection.on_notify = self._on_notify
        connection.on_push = self._on_push
        connection.on_track = self._on_track
        connection.on_data_channel = lambda label: self._event(DataChannel(label))
        connection.on_message = self._on_message
        connection.on_switched = lambda text: self._event(Switched(text))
        connection.on_disconnect = self._on_disconnect

    # ---- SDK threads --------------------------------------------------------------------------------------
    def _event(self, event: Any) -> None:
        with self._lock:
            feeds = list(self._event_feeds)
        for feed in feeds:
            feed.put(event)

    def _resolve(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is gone

    def _on_notify(self, text: str) -> None:
        message = _parse(text)
        message = message if isinstance(message, dict) else {}
        if message.get("event_type") == "connection.created" and \
                message.get("connection_id") == self.connection._connection_id:
            self._resolve(_wake, self._created)
        self._event(Notify(text, message))

    def _on_push(self, text: str) -> None:
        self._event(Push(text, _parse(text)))

    def _on_track(self, track: SoraMediaTrack) -> None:
        with self._lock:
            self._tracks.append(track)
            feeds = list(self._track_feeds)
        for feed in feeds:
            feed.put(track)
        self._event(Track(track))

    def _on_message(self, label: str, data: bytes) -> None:
        with self._lock:
            feeds = [feed for wanted, feed in self._message_feeds if wanted == label]
        for feed in feeds:
            feed.put((label, data))
        self._event(Message(label, data))

    def _on_disconnect(self, code: SoraSignalingErrorCode, message: str) -> None:
        end = Disconnected(code, message)
        self._end = end
        self._event(end)

        def fail() -> None:
            if not self._created.done():
                self._created.set_exception(ConnectionFailed(code, message))
        self._resolve(fail)
        with self._lock:
            feeds = self._track_feeds + self._event_feeds + [f for _, f in self._message_feeds] + \
                [f for pairs in self._frame_feeds.values() for f, _ in pairs]
        for feed in feeds:
            feed.close()
        self._ended.set()

    # ---- loop ---------------------------------------------------------------------------------------------
    async def _drain(self, feed: _Feed, cleanup) -> AsyncIterator[Any]:
        try:
            async for item in feed:
                yield item
        finally:
            cleanup()

    def tracks(self) -> AsyncIterator[SoraMediaTrack]:
        """Remote tracks: those announced so far, then each new one, until the connection ends."""
        feed = _Feed(self._loop)
        with self._lock:
            for track in self._tracks:
                feed.put(track)
            self._track_feeds.append(feed)
        if self._end is not None:
            feed.close()
        return self._drain(feed, lambda: self._forget(self._track_feeds, feed))

    def frames(self, track: SoraMediaTrack, *, capacity: int = FRAME_CAPACITY,
               format: str = "bgr") -> AsyncIterator[Any]:
        """Decoded frames of `track` (SoraVideoFrame, or 10 ms SoraAudioFrame) from now until it ends; at most
        `capacity` wait for the consumer, older ones are dropped and counted in `dropped(track)`."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError("capacity must be an int >= 1")
        feed = _Feed(self._loop, capacity)
        sink = SoraVideoSink(track, format=format) if track.kind == "video" else SoraAudioStreamSink(track)
        sink.on_frame = feed.put
        with self._lock:
            self._frame_feeds.setdefault(id(track), []).append((feed, sink))
        if self._end is not None:
            feed.close()
        return self._drain(feed, sink.close)

    def dropped(self, track: SoraMediaTrack) -> int:
        """Frames of `track` that its iterators dropped because the consumer fell behind (and the sink before)."""
        with self._lock:
            pairs = list(self._frame_feeds.get(id(track), []))
        return sum(feed.dropped + sink.dropped for feed, sink in pairs)

    def events(self) -> AsyncIterator[Any]:
        """Every event from now on, typed (Notify, Push, Track, DataChannel, Message, Switched), ending with
        Disconnected (at once if the connection has already ended)."""
        feed = _Feed(self._loop)
        with self._lock:
            ended = self._end
            if ended is None:
                self._event_feeds.append(feed)
        if ended is not None:
            feed.put(ended)
            feed.close()
        return self._drain(feed, lambda: self._forget(self._event_feeds, feed))

    def messages(self, label: str) -> AsyncIterator[Tuple[str, bytes]]:
        """(label, data) of each message received on data channel `label` from now on, until the end."""
        if not isinstance(label, str):
            raise TypeError("label must be a str")
        feed = _Feed(self._loop)
        with self._lock:
            self._message_feeds.append((label, feed))
        if self._end is not None:
            feed.close()
        return self._drain(feed, lambda: self._forget(self._message_feeds, (label, feed)))

    def _forget(self, feeds: list, item: Any) -> None:
        with self._lock:
            if item in feeds:
                feeds.remove(item)

    async def send(self, label: str, data: bytes, *, threshold: int = SEND_THRESHOLD) -> bool:
        """Send one message on data channel `label`, first waiting while more than `threshold` bytes are queued
        on it (so a fast sender never overruns the SCTP buffer); False if the channel is not open."""
        core = self.connection._core
        delay = 0.001
        while core.buffered_amount(label) > threshold:
            if self._end is not None:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        return self.connection.send_data_channel(label, data)

    async def get_stats(self) -> List[Dict[str, Any]]:
        """The W3C stats, parsed."""
        text = await asyncio.get_running_loop().run_in_executor(None, self.connection.get_stats)
        return json.loads(text)

    async def disconnect(self) -> None:
        """End the connection; returns once on_disconnect has run (idempotent)."""
        if not self._ended.is_set():
            await asyncio.get_running_loop().run_in_executor(None, self.connection.disconnect)

    @property
    def ended(self) -> Optional[Disconnected]:
        """How the connection ended, or None while it lasts."""
        return self._end

    async def __aenter__(self) -> "AsyncConnection":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.disconnect()


class AsyncSora:
    """One `Sora` (`sora`) for asyncio; `async with` closes it, ending every connection. Keywords as `Sora()`."""

    def __init__(self, **kwargs: Any) -> None:
        self.sora = Sora(**kwargs)
        self._connections: List[AsyncConnection] = []

    def create_video_source(self):
        return self.sora.create_video_source()

    def create_audio_source(self, channels: int, sample_rate: int):
        return self.sora.create_audio_source(channels, sample_rate)

    async def connect(self, **kwargs: Any) -> AsyncConnection:
        """Create a connection (every `create_connection` keyword) and connect it; returns once
        `connection.created` for it has arrived. Raises ConnectionFailed if it ends before; cancelled, it
        disconnects."""
        loop = asyncio.get_running_loop()
        conn = AsyncConnection(self.sora.create_connection(**kwargs), loop)
        self._connections.append(conn)
        conn.connection.connect()
        try:
            await conn._created
        except asyncio.CancelledError:
            self._connections.remove(conn)
            threading.Thread(target=conn.connection.disconnect, name="sora-aio-cancel", daemon=True).start()
            raise
        except ConnectionFailed:
            self._connections.remove(conn)
            raise
        return conn

    async def close(self) -> None:
        """Disconnect every connection (each gets its on_disconnect), then close the Sora (idempotent)."""
        connections, self._connections = self._connections, []
        await asyncio.gather(*(c.disconnect() for c in connections), return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self.sora.close)

    async def __aenter__(self) -> "AsyncSora":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
