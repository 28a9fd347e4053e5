"""The data channels of one connection: labels, compression and counters."""
from __future__ import annotations

import zlib
from typing import Dict, List, Optional


class Channel:
    __slots__ = ("id", "label", "state", "opened", "messages_sent", "bytes_sent", "messages_received",
                 "bytes_received")

    def __init__(self, channel_id: int, label: str) -> None:
        self.id = channel_id
        self.label = label
        self.state = "open"
        self.opened = True
        self.messages_sent = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.bytes_received = 0

    def stats(self) -> dict:
        return {"id": self.id, "label": self.label, "state": self.state, "opened": self.opened,
                "messages_sent": self.messages_sent, "bytes_sent": self.bytes_sent,
                "messages_received": self.messages_received, "bytes_received": self.bytes_received}


class DataChannels:
    """What the offer said about each label (`compress`, listed or not) and the open channels."""

    def __init__(self) -> None:
        self._compress: Dict[str, bool] = {}
        self._listed: List[str] = []
        self._by_label: Dict[str, Channel] = {}
        self._all: List[Channel] = []

    def apply_offer(self, entries) -> None:
        """Record the offer's `data_channels` (each entry has `label` and `compress`)."""
        for entry in entries or ():
            if isinstance(entry, dict) and isinstance(entry.get("label"), str):
                label = entry["label"]
                self._compress[label] = entry.get("compress") is True
                if label not in self._listed:
                    self._listed.append(label)

    def listed(self, label: str) -> bool:
        return label in self._listed

    def opened(self, channel_id: int, label: str) -> Channel:
        channel = Channel(channel_id, label)
        self._by_label[label] = channel
        self._all.append(channel)
        return channel

    def closed(self, channel_id: int) -> Optional[Channel]:
        for channel in self._all:
            if channel.id == channel_id and channel.state != "closed":
                channel.state = "closed"
                if self._by_label.get(channel.label) is channel:
                    del self._by_label[channel.label]
                return channel
        return None

    def get(self, label: str) -> Optional[Channel]:
        return self._by_label.get(label)

    def open_count(self) -> int:
        return len(self._by_label)

    def encode(self, label: str, data: bytes) -> bytes:
        """The bytes to put on the wire for `label` (zlib when the offer asked for it)."""
        return zlib.compress(data) if self._compress.get(label) else data

    def decode(self, label: str, data: bytes) -> bytes:
        return zlib.decompress(data) if self._compress.get(label) else data

    def count_sent(self, channel: Channel, size: int) -> None:
        channel.messages_sent += 1
        channel.bytes_sent += size

    def count_received(self, channel_id: int, size: int) -> None:
        for channel in self._all:
            if channel.id == channel_id and channel.state == "open":
                channel.messages_received += 1
                channel.bytes_received += size
                return

    def stats(self) -> List[dict]:
        return [channel.stats() for channel in self._all]
