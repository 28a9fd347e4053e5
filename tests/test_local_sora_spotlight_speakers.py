"""Spotlight follows the speakers: the local server decodes each sender's audio and focuses the senders that
most recently started speaking (real Opus from our SDK, decoded on the server; loopback only).

Three senders send video (simulcast, as spotlight asks) and audio that is silent until a test makes one of
them "talk" (a 300 Hz tone); a spotlight receiver with spotlight_number=1 must see its focus move to each new
speaker, with spotlight.focused / spotlight.unfocused notifies, and a steady sound must not make it flap.
"""
from __future__ import annotations

import json
import threading
import time
from typing import List

import numpy as np

from tests.conftest import Recorder, wait_until

RATE = 48000


class Talker:
    """A spotlight sender: small video frames and audio that is silence or a tone while `speaking` is set."""

    def __init__(self, sora, url: str, channel: str) -> None:
        self.video = sora.create_video_source()
        self.audio = sora.create_audio_source(1, RATE)
        self.speaking = threading.Event()
        self.conn = sora.create_connection(signaling_urls=[url], role="sendonly", channel_id=channel,
                                           video_source=self.video, audio_source=self.audio, spotlight=True,
                                           video_codec_type="VP8", video_bit_rate=300)
        self.rec = Recorder(self.conn)
        self.conn.connect()
        assert self.rec.connected.wait(15), self.rec.events
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="talker", daemon=True)
        self._thread.start()

    @property
    def connection_id(self) -> str:
        return self.rec.connection_id

    def _run(self) -> None:
        frame = np.full((120, 160, 3), 90, np.uint8)
        start, sent, frames = time.monotonic(), 0, 0
        while not self._stop.wait(0.01):
            now = time.monotonic() - start
            while int(now * RATE) - sent >= 480:
                if self.speaking.is_set():
                    t = (np.arange(480) + sent) / RATE
                    chunk = (np.sin(2 * np.pi * 300 * t) * 6000).astype(np.int16)
                else:
                    chunk = np.zeros(480, np.int16)
                self.audio.on_data(chunk.reshape(-1, 1))
                sent += 480
            if now * 10 >= frames:
                frame[:20] = (frames * 16) % 256
                self.video.on_captured(frame)
                frames += 1

    def leave(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.disconnect()


def _notifies(rec: Recorder, event_type: str) -> List[dict]:
    return [n for n in rec.notifies if n.get("event_type") == event_type]


def test_focus_moves_to_whoever_starts_speaking(local_sora, sora):
    channel = "speakers"
    talkers = [Talker(sora, local_sora.signaling_url, channel) for _ in range(3)]
    receiver = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly",
                                      channel_id=channel, spotlight=True, spotlight_number=1)
    rec = Recorder(receiver)
    receiver.connect()
    try:
        assert rec.connected.wait(15), rec.events
        media = local_sora._registry.channel(channel).media
        first, second, third = (t.connection_id for t in talkers)

        def focus() -> List[str]:
            return media.focused(rec.connection_id)

        # Nobody spoke yet: the earliest sender is in focus.
        assert wait_until(lambda: focus() == [first], 10), focus()
        assert wait_until(lambda: [n["connection_id"] for n in _notifies(rec, "spotlight.focused")] == [first], 10)

        talkers[1].speaking.set()
        assert wait_until(lambda: focus() == [second], 10), focus()
        assert wait_until(lambda: _notifies(rec, "spotlight.focused")[-1]["connection_id"] == second, 10)
        assert _notifies(rec, "spotlight.unfocused")[-1]["connection_id"] == first

        # A steady sound does not flap the focus.
        count = len(_notifies(rec, "spotlight.focused"))
        time.sleep(2.0)
        assert focus() == [second] and len(_notifies(rec, "spotlight.focused")) == count

        talkers[1].speaking.clear()
        talkers[2].speaking.set()
        assert wait_until(lambda: focus() == [third], 10), focus()
        assert wait_until(lambda: _notifies(rec, "spotlight.focused")[-1]["connection_id"] == third, 10)

        # The second speaks again after a pause: the most recent start wins, though the third goes on.
        time.sleep(1.0)
        talkers[1].speaking.set()
        assert wait_until(lambda: focus() == [second], 10), focus()
        assert json.dumps(_notifies(rec, "spotlight.focused")[-1])  # a plain JSON object
    finally:
        receiver.disconnect()
        for talker in talkers:
            talker.leave()
