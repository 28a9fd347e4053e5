"""asyncio example: a sender and a receiver on one channel of the embedded local Sora server.

    python -m sora_sdk.aio_demo [--seconds 5] [--signaling-url URL --channel-id ID]

The sender captures from a coroutine and sends a data-channel message each second; the receiver iterates its
tracks, frames, messages and events. Without --signaling-url it starts the local server.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

import numpy as np

from .aio import AsyncSora, ConnectionFailed, Disconnected, Notify

CHAT = {"data_channel_signaling": True, "data_channels": [{"label": "#chat", "direction": "sendrecv"}]}


async def send(sora: AsyncSora, url: str, channel: str, seconds: float) -> None:
    video = sora.create_video_source()
    audio = sora.create_audio_source(1, 48000)
    conn = await sora.connect(signaling_urls=[url], role="sendrecv", channel_id=channel, video_source=video,
                              audio_source=audio, **CHAT)
    frame = np.zeros((240, 320, 3), np.uint8)
    silence = np.zeros((480, 1), np.int16)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        frame[:] = (n * 3 % 256, 128, 255 - n * 3 % 256)
        video.on_captured(frame)  # about 0.1 ms at 320x240: fine on the loop
        for _ in range(3):
            audio.on_data(silence)
        if n % 30 == 0:
            await conn.send("#chat", b"hello %d" % (n // 30))
        n += 1
        await asyncio.sleep(1 / 30)
    await conn.disconnect()


async def receive(sora: AsyncSora, url: str, channel: str, seconds: float) -> dict:
    conn = await sora.connect(signaling_urls=[url], role="recvonly", channel_id=channel, data_channel_signaling=True,
                              data_channels=[{"label": "#chat", "direction": "recvonly"}])
    counts = {"video frames": 0, "audio frames": 0, "messages": 0, "notifies": 0}

    async def frames(track) -> None:
        async for _frame in conn.frames(track):
            counts["%s frames" % track.kind] += 1

    async def messages() -> None:
        async for _label, data in conn.messages("#chat"):
            counts["messages"] += 1
            print("message:", data.decode())

    async def events() -> None:
        async for event in conn.events():
            if isinstance(event, Notify):
                counts["notifies"] += 1
            elif isinstance(event, Disconnected):
                print("receiver ended:", event.code.name, event.message)

    async def tracks() -> None:
        async for track in conn.tracks():
            print("track:", track.kind, track.id)
            tasks.append(asyncio.ensure_future(frames(track)))

    tasks = [asyncio.ensure_future(messages()), asyncio.ensure_future(events()), asyncio.ensure_future(tracks())]
    await asyncio.sleep(seconds)
    stats = await conn.get_stats()
    inbound = [s for s in stats if s.get("type") == "inbound-rtp"]
    await conn.disconnect()
    await asyncio.gather(*tasks, return_exceptions=True)
    counts["inbound-rtp entries"] = len(inbound)
    return counts


async def main(args) -> int:
    server = None
    url, channel = args.signaling_url, args.channel_id
    if url is None:
        from .testing import LocalSora

        server = LocalSora().start()
        url = server.signaling_url
        print("local Sora server:", url)
    try:
        async with AsyncSora() as sora:
            receiver = asyncio.ensure_future(receive(sora, url, channel, args.seconds + 1))
            await asyncio.sleep(0.5)
            await send(sora, url, channel, args.seconds)
            counts = await receiver
    except ConnectionFailed as exc:
        print("could not connect: %s" % exc, file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.close()
    print("received: " + ", ".join("%s %d" % kv for kv in counts.items()))
    ok = counts["video frames"] > 0 and counts["audio frames"] > 0 and counts["messages"] > 0
    return 0 if ok else 1


def parse(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sora_sdk.aio_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--signaling-url", help="a Sora signaling URL (default: start the local server)")
    parser.add_argument("--channel-id", default="sora-aio-demo", help="channel (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the sender sends (default: 5)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
