"""Forwarding filters of the local Sora server (sora_sdk.testing.filters): the pure rules, then end to
end through the SFU with our SDK (real encoded media over loopback)."""
from __future__ import annotations

import importlib.util
import json
import time
from typing import Dict, List, Optional

import numpy as np
import pytest

import sora_sdk
from sora_sdk.testing import filters
from sora_sdk.testing.filters import FilterError, allows, parse_filter, parse_filters
from tests.conftest import Recorder, wait_until
from tests.media_pump import RATE, Pump

WAIT = 15.0  # every wait below is bounded by this (or less)

pytestmark = [pytest.mark.timeout(90)] if importlib.util.find_spec("pytest_timeout") else []


def rule(field, operator, *values):
    return {"field": field, "operator": operator, "values": list(values)}


def flt(*groups, action=None, priority=None, **extra):
    out = dict(extra)
    if action is not None:
        out["action"] = action
    if priority is not None:
        out["priority"] = priority
    out["rules"] = [list(group) for group in groups]
    return out


def decide(filter_list, cid="C1", client="cl1", kind="video"):
    return allows(parse_filters(None, filter_list), cid, client, kind)


# ------------------------------------------------------------------------------------------ unit
def test_no_filters_forward_everything():
    assert allows((), "C1", "cl1", "video")
    assert allows(parse_filters(), "C1", "cl1", "audio")
    assert parse_filters(None, []) == ()
    assert filters.from_connect({"type": "connect"}) == ()
    assert filters.from_connect({"forwarding_filter": None, "forwarding_filters": None}) == ()


def test_block_is_the_default_action():
    f = parse_filter(flt([rule("kind", "is_in", "video")]))
    assert f.action == "block" and f.priority == 0
    assert not allows([f], "C1", "cl1", "video")
    assert allows([f], "C1", "cl1", "audio")


def test_block_by_connection_id_and_kind_is_an_and():
    block = [flt([rule("connection_id", "is_in", "A"), rule("kind", "is_in", "video")], action="block")]
    assert not decide(block, "A", "x", "video")
    assert decide(block, "A", "x", "audio")
    assert decide(block, "B", "x", "video")
    assert decide(block, "B", "x", "audio")


def test_groups_are_an_or():
    block = [flt([rule("connection_id", "is_in", "A")], [rule("client_id", "is_in", "screen"),
                                                          rule("kind", "is_in", "audio")])]
    assert not decide(block, "A", "cam", "video")
    assert not decide(block, "A", "cam", "audio")
    assert not decide(block, "B", "screen", "audio")
    assert decide(block, "B", "screen", "video")
    assert decide(block, "B", "cam", "audio")


def test_allow_forwards_only_its_matches():
    allow = [flt([rule("client_id", "is_in", "cam-b", "cam-c")], action="allow")]
    assert decide(allow, "X", "cam-b", "video")
    assert decide(allow, "Y", "cam-c", "audio")
    assert not decide(allow, "Z", "cam-a", "video")
    assert not decide(allow, "Z", "cam-a", "audio")


def test_is_not_in():
    block = [flt([rule("kind", "is_not_in", "audio")])]  # block everything but audio
    assert decide(block, kind="audio") and not decide(block, kind="video")
    allow = [flt([rule("client_id", "is_not_in", "bot")], action="allow")]
    assert decide(allow, client="human") and not decide(allow, client="bot")
    both = [flt([rule("client_id", "is_not_in", "a", "b"), rule("connection_id", "is_not_in", "C9")])]
    assert not decide(both, "C1", "c")       # neither a/b nor C9: blocked
    assert decide(both, "C9", "c")           # C9 escapes
    assert decide(both, "C1", "a")           # client a escapes


def test_the_capture_example():
    # first-messages-by-scenario.json, "basic~forwarding-filters"
    capture = [
        {"name": "test", "priority": 128, "action": "block",
         "rules": [[rule("connection_id", "is_in", "S8YEN0TSE13JDC2991NG4XZ150")],
                   [rule("client_id", "is_in", "screen-share"), rule("kind", "is_in", "audio")]],
         "version": "2025.1.0", "metadata": {"m": 1}},
        {"action": "allow", "rules": [[rule("kind", "is_not_in", "video")]]},
    ]
    parsed = parse_filters(None, capture)
    # no priority = 0: the allow filter is evaluated first
    assert [f.action for f in parsed] == ["allow", "block"]
    assert parsed[1].name == "test" and parsed[1].version == "2025.1.0" and parsed[1].metadata == {"m": 1}
    assert allows(parsed, "S8YEN0TSE13JDC2991NG4XZ150", "x", "audio")  # allow (priority 0) wins
    assert not allows(parsed, "S8YEN0TSE13JDC2991NG4XZ150", "x", "video")  # the block matches
    assert not allows(parsed, "OTHER", "x", "video")  # nothing matches, an allow filter exists
    assert allows(parsed, "OTHER", "screen-share", "audio")


def test_lower_priority_number_wins():
    block_video = flt([rule("kind", "is_in", "video")], action="block", priority=10)
    allow_b = flt([rule("client_id", "is_in", "b")], action="allow", priority=5)
    assert decide([block_video, allow_b], client="b", kind="video")      # allow (5) before block (10)
    assert not decide([block_video, allow_b], client="a", kind="video")  # only the block matches
    assert not decide([block_video, allow_b], client="a", kind="audio")  # no match + an allow filter
    allow_b["priority"] = 20
    assert not decide([block_video, allow_b], client="b", kind="video")  # now the block comes first
    assert decide([block_video, allow_b], client="b", kind="audio")


def test_equal_priorities_keep_the_message_order():
    block = flt([rule("kind", "is_in", "video")], action="block", priority=3)
    allow = flt([rule("kind", "is_in", "video")], action="allow", priority=3)
    assert not decide([block, allow])
    assert decide([allow, block])
    # forwarding_filter comes before the items of forwarding_filters
    assert not allows(parse_filters(block, [allow]), "C", "c", "video")
    assert allows(parse_filters(allow, [block]), "C", "c", "video")
    assert filters.from_connect({"forwarding_filter": allow, "forwarding_filters": [block]})[0].action == "allow"


def test_block_only_lists_forward_unmatched_tracks():
    lst = [flt([rule("client_id", "is_in", "a")]), flt([rule("client_id", "is_in", "b")], priority=7)]
    assert not decide(lst, client="a") and not decide(lst, client="b") and decide(lst, client="c")


def test_allows_sorts_filters_given_in_any_order():
    late_block = parse_filter(flt([rule("kind", "is_in", "audio")], action="block", priority=9))
    early_allow = parse_filter(flt([rule("kind", "is_in", "audio")], action="allow", priority=1))
    assert allows([late_block, early_allow], "C", "c", "audio")


def test_unknown_extra_keys_are_ignored():
    f = parse_filter({"rules": [[dict(rule("kind", "is_in", "audio"), note="x")]], "future": 1})
    assert not allows([f], "C", "c", "audio")


@pytest.mark.parametrize("bad", [
    "not an object",
    [],
    {},                                                                     # no rules
    {"rules": []},                                                          # empty rules
    {"rules": [[]]},                                                        # empty group
    {"rules": [rule("kind", "is_in", "audio")]},                            # rules not nested
    {"rules": "kind"},
    {"rules": [["kind"]]},                                                  # a rule not an object
    {"rules": [[rule("track_id", "is_in", "x")]]},                          # unknown field
    {"rules": [[rule("kind", "equals", "audio")]]},                         # unknown operator
    {"rules": [[rule("kind", "is_in")]]},                                   # empty values
    {"rules": [[{"field": "kind", "operator": "is_in", "values": "audio"}]]},  # values not a list
    {"rules": [[{"field": "kind", "operator": "is_in"}]]},                  # no values
    {"rules": [[rule("client_id", "is_in", "a", 5)]]},                      # non-string value
    {"rules": [[rule("kind", "is_in", "data")]]},                           # bad kind value
    flt([rule("kind", "is_in", "audio")], action="deny"),
    flt([rule("kind", "is_in", "audio")], action="BLOCK"),
    flt([rule("kind", "is_in", "audio")], priority=-1),
    flt([rule("kind", "is_in", "audio")], priority=2 ** 31),
    flt([rule("kind", "is_in", "audio")], priority="1"),
    flt([rule("kind", "is_in", "audio")], priority=True),
    flt([rule("kind", "is_in", "audio")], priority=1.0),
    flt([rule("kind", "is_in", "audio")], name=5),
    flt([rule("kind", "is_in", "audio")], version=2025),
])
def test_malformed_filters_are_rejected(bad):
    with pytest.raises(FilterError):
        parse_filter(bad)
    with pytest.raises(FilterError):
        filters.from_connect({"forwarding_filters": [flt([rule("kind", "is_in", "audio")]), bad]})
    with pytest.raises(FilterError):
        filters.from_connect({"forwarding_filter": bad})


@pytest.mark.parametrize("bad", [{"rules": [[rule("kind", "is_in", "audio")]]}, "x", 5])
def test_forwarding_filters_must_be_a_list(bad):
    with pytest.raises(FilterError, match="forwarding_filters must be a list"):
        parse_filters(None, bad)


def test_error_messages_say_where():
    with pytest.raises(FilterError, match=r"forwarding_filters\[1\]: rules\[0\]\[1\]: operator"):
        parse_filters(None, [flt([rule("kind", "is_in", "audio")]),
                             flt([rule("kind", "is_in", "audio"), rule("kind", "has", "video")])])


def test_valid_edges():
    assert parse_filter(flt([rule("kind", "is_in", "audio")], priority=2 ** 31 - 1)).priority == 2 ** 31 - 1
    assert parse_filter(flt([rule("kind", "is_in", "audio")], action=None)).action == "block"
    assert parse_filter(dict(flt([rule("kind", "is_in", "audio")]), priority=None)).priority == 0
    f = parse_filter(flt([rule("client_id", "is_in", "")], metadata=[1, {"a": None}], name="n"))
    assert f.metadata == [1, {"a": None}] and f.name == "n"
    assert not allows([f], "C", "", "audio")


def test_forwarded_reads_the_receivers_session():
    class S:
        def __init__(self, cid, client, ff=None):
            self.connection_id, self.client_id = cid, client
            if ff is not None:
                self.forwarding_filters = ff

    sender = S("A", "cam")
    assert filters.forwarded(S("R", "r"), sender, "video")  # no attribute: forward
    receiver = S("R", "r", parse_filters(flt([rule("client_id", "is_in", "cam"), rule("kind", "is_in", "video")])))
    assert not filters.forwarded(receiver, sender, "video")
    assert filters.forwarded(receiver, sender, "audio")


# ------------------------------------------------------------------------------------------ end to end
class Sender:
    def __init__(self, sora, url: str, channel_id: str, client_id: str, colours) -> None:
        self.video = sora.create_video_source()
        self.audio = sora.create_audio_source(1, RATE)
        self.conn = sora.create_connection(signaling_urls=[url], role="sendonly", channel_id=channel_id,
                                           client_id=client_id, video_source=self.video,
                                           audio_source=self.audio, video_codec_type="VP8", video_bit_rate=300)
        self.rec = Recorder(self.conn)
        self.pump: Optional[Pump] = None
        self.conn.connect()
        assert self.rec.connected.wait(WAIT), self.rec.events
        self.pump = Pump(self.video, self.audio, colours)

    @property
    def connection_id(self) -> str:
        return self.rec.connection_id

    def leave(self) -> None:
        if self.pump is not None:
            self.pump.stop()
        self.conn.disconnect()


class Receiver:
    """A recvonly client counting decoded video frames and keeping an audio sink per sender."""

    def __init__(self, sora, url: str, channel_id: str, **options) -> None:
        self.conn = sora.create_connection(signaling_urls=[url], role="recvonly", channel_id=channel_id,
                                           **options)
        self.rec = Recorder(self.conn)
        self.tracks: List = []
        self.frames: Dict[str, int] = {}
        self.audio: Dict[str, object] = {}
        self.sinks: List = []
        self.conn.on_track = self._on_track

    def connect(self) -> "Receiver":
        self.conn.connect()
        assert self.rec.connected.wait(WAIT), self.rec.events
        return self

    @property
    def connection_id(self) -> str:
        return self.rec.connection_id

    def _on_track(self, track) -> None:
        self.tracks.append(track)
        sid = track.stream_id
        if track.kind == "video":
            self.frames.setdefault(sid, 0)
            sink = sora_sdk.SoraVideoSink(track)

            def on_frame(frame, sid=sid) -> None:
                self.frames[sid] = self.frames.get(sid, 0) + 1

            sink.on_frame = on_frame
        else:
            sink = sora_sdk.SoraAudioSink(track, RATE, 1)
            self.audio[sid] = sink
        self.sinks.append(sink)

    def kinds(self, sender: Sender) -> List[str]:
        return sorted(t.kind for t in self.tracks if t.stream_id == sender.connection_id)

    def leave(self) -> None:
        self.conn.disconnect()


@pytest.fixture
def cleanup():
    items: List = []
    yield items
    for item in reversed(items):
        try:
            item.leave()
        except Exception:
            pass


COLOURS = [((40, 160, 220), (200, 60, 30)), ((200, 30, 90), (30, 200, 90))]


def _slots(local_sora, channel_id: str, receiver: Receiver):
    return sorted((s["sender"], s["kind"]) for s in local_sora._registry.channel(channel_id).media.forwards(
        receiver.connection_id) if s["state"] in ("offered", "active"))


def _assert_sound(receiver: Receiver, sender: Sender) -> None:
    assert wait_until(lambda: sender.connection_id in receiver.audio, WAIT)
    sink = receiver.audio[sender.connection_id]
    ok, _ = sink.read(RATE // 5, 5)  # skip the decoder warm-up
    ok, samples = sink.read(RATE // 10, 5)
    assert ok
    rms = float(np.sqrt(np.mean(samples[:, 0].astype(np.float64) ** 2)))
    assert rms > 2000, rms


def _assert_video(receiver: Receiver, sender: Sender, frames: int = 10) -> None:
    assert wait_until(lambda: receiver.frames.get(sender.connection_id, 0) >= frames, WAIT), \
        (receiver.frames, [(t.kind, t.stream_id) for t in receiver.tracks])


def test_block_video_of_one_sender(local_sora, sora, cleanup):
    url = local_sora.signaling_url
    a = Sender(sora, url, "ff-block", "cam-a", COLOURS[0])
    cleanup.append(a)
    b = Sender(sora, url, "ff-block", "cam-b", COLOURS[1])
    cleanup.append(b)
    time.sleep(0.5)  # both senders' tracks reach the server: they go in the receiver's first offer
    block = {"name": "no-video-of-a", "priority": 1, "action": "block",
             "rules": [[rule("connection_id", "is_in", a.connection_id), rule("kind", "is_in", "video")]]}
    receiver = Receiver(sora, url, "ff-block", forwarding_filter=block)
    cleanup.append(receiver)
    receiver.connect()
    assert wait_until(lambda: receiver.kinds(a) == ["audio"] and receiver.kinds(b) == ["audio", "video"], WAIT), \
        [(t.kind, t.stream_id) for t in receiver.tracks]
    _assert_video(receiver, b)
    _assert_sound(receiver, a)
    _assert_sound(receiver, b)
    assert _slots(local_sora, "ff-block", receiver) == sorted(
        [(a.connection_id, "audio"), (b.connection_id, "audio"), (b.connection_id, "video")])
    time.sleep(0.5)
    assert receiver.kinds(a) == ["audio"] and a.connection_id not in receiver.frames
    session = local_sora._registry.session(receiver.connection_id)
    assert [f.name for f in session.forwarding_filters] == ["no-video-of-a"]


def test_allow_by_client_id_for_senders_joining_later(local_sora, sora, cleanup):
    url = local_sora.signaling_url
    allow = [{"action": "allow", "rules": [[rule("client_id", "is_in", "cam-b")]]}]
    receiver = Receiver(sora, url, "ff-allow", forwarding_filters=allow)
    cleanup.append(receiver)
    receiver.connect()
    a = Sender(sora, url, "ff-allow", "cam-a", COLOURS[0])
    cleanup.append(a)
    b = Sender(sora, url, "ff-allow", "cam-b", COLOURS[1])
    cleanup.append(b)
    assert wait_until(lambda: receiver.kinds(b) == ["audio", "video"], WAIT), \
        [(t.kind, t.stream_id) for t in receiver.tracks]
    _assert_video(receiver, b)
    _assert_sound(receiver, b)
    assert _slots(local_sora, "ff-allow", receiver) == sorted([(b.connection_id, "audio"), (b.connection_id, "video")])
    assert receiver.kinds(a) == [] and a.connection_id not in receiver.frames
    # a second, unfiltered receiver in the same channel gets both senders
    other = Receiver(sora, url, "ff-allow")
    cleanup.append(other)
    other.connect()
    assert wait_until(lambda: other.kinds(a) == ["audio", "video"] and other.kinds(b) == ["audio", "video"], WAIT)
    _assert_video(other, a)
    assert receiver.kinds(a) == []


def test_malformed_filter_rejects_the_connect(local_sora, sora, cleanup):
    # well-formed for the SDK's own type check, invalid for the server: the action is unknown
    bad = {"action": "deny", "rules": [[rule("kind", "is_in", "video")]]}
    receiver = Receiver(sora, local_sora.signaling_url, "ff-bad", forwarding_filter=bad)
    cleanup.append(receiver)
    receiver.conn.connect()
    assert receiver.rec.disconnected.wait(WAIT), receiver.rec.events
    assert not receiver.rec.connected.is_set()
    assert receiver.rec.of("ws_close") == [(4000, "INVALID-FORWARDING-FILTER")], receiver.rec.events
    code, message = receiver.rec.disconnect
    assert code == sora_sdk.SoraSignalingErrorCode.WEBSOCKET_ONCLOSE, receiver.rec.disconnect
    assert "wscode=4000 wsreason=INVALID-FORWARDING-FILTER" in message, receiver.rec.disconnect
    assert not receiver.rec.of("set_offer")
    # the server goes on: the same client with a valid filter connects
    good = Receiver(sora, local_sora.signaling_url, "ff-bad",
                    forwarding_filter=dict(bad, action="block"))
    cleanup.append(good)
    good.connect()
    assert json.loads(good.rec.of("set_offer")[0][0])["type"] == "offer"
