"""simulcast_request_rid and the simulcast.switched notify of the local Sora server (see the docstring of
sora_sdk/testing/media.py): our SDK sends one 640x480 source as three VP8 layers, our SDK receivers ask for
layers and are told every change of the layer they get. Real WebRTC over loopback; every wait is bounded."""
from __future__ import annotations

import time
from typing import List

from tests import test_local_sora_simulcast as simulcast
from tests.conftest import wait_until
from tests.test_local_sora_simulcast import SIZES, WAIT, Client

clients = simulcast.clients  # the fixture: senders and receivers of our SDK, left at the end

SWITCHED_KEYS = {"type", "event_type", "timestamp", "sender_connection_id", "priority", "trigger", "rpc_rids",
                 "auto_rids", "request_rid", "current_rid", "previous_rid"}


def switched(receiver: Client, sender: Client) -> List[dict]:
    return [n for n in receiver.notifies("simulcast.switched") if n["sender_connection_id"] == sender.connection_id]


def wait_switched(receiver: Client, sender: Client, count: int, timeout: float = WAIT) -> List[dict]:
    assert wait_until(lambda: len(switched(receiver, sender)) >= count, timeout), receiver.rec.notifies
    return switched(receiver, sender)


def steps(notifies: List[dict]) -> List[tuple]:
    return [(n["previous_rid"], n["current_rid"], n["trigger"]) for n in notifies]


def layers_known(local_sora, channel: str, sender: Client) -> None:
    router = local_sora._registry.channel(channel).media
    assert wait_until(lambda: sender.connection_id in router._senders
                      and len(router._senders[sender.connection_id].layers) == 3, WAIT)


def test_simulcast_request_rid_picks_the_layer_and_the_choice_is_notified(local_sora, clients):
    sender = clients("req", "sendonly", send=True, simulcast=True)
    layers_known(local_sora, "req", sender)
    r1 = clients("req", "recvonly", simulcast=True, simulcast_request_rid="r1")
    # simulcast_request_rid wins over the older simulcast_rid
    both = clients("req", "recvonly", simulcast=True, simulcast_rid="r2", simulcast_request_rid="r0")
    none = clients("req", "recvonly", simulcast=True, simulcast_request_rid="none")
    legacy = clients("req", "recvonly", simulcast=True, simulcast_rid="r2")
    assert r1.wait_size(sender, SIZES["r1"]), r1.size(sender)
    assert both.wait_size(sender, SIZES["r0"]), both.size(sender)
    assert legacy.wait_size(sender, SIZES["r2"]), legacy.size(sender)
    media = local_sora._registry.channel("req").media
    for receiver, rid, forwarding in ((r1, "r1", True), (both, "r0", True), (none, None, False),
                                      (legacy, "r2", True)):
        video = [s for s in media.forwards(receiver.connection_id) if s["kind"] == "video"]
        assert [(s["rid"], s["forwarding"]) for s in video] == [(rid, forwarding)], (rid, video)
    assert [c["simulcast_request_rid"] for c in local_sora.connections("req")
            if c["connection_id"] == both.connection_id] == ["r0"]

    for receiver, requested in ((r1, "r1"), (both, "r0"), (legacy, "r2")):
        (notify,) = wait_switched(receiver, sender, 1)
        assert set(notify) == SWITCHED_KEYS, notify
        assert notify["type"] == "notify" and notify["sender_connection_id"] == sender.connection_id
        assert (notify["request_rid"], notify["previous_rid"], notify["current_rid"]) == (requested, "none",
                                                                                        requested)
        assert notify["trigger"] == "receiver"  # its own request decided it (when it joined)
        assert notify["priority"] == "lower" and notify["rpc_rids"] == []
        assert notify["auto_rids"] == ["r0", "r1", "r2"]
        assert notify["timestamp"].endswith("Z")
    # "none": nothing forwarded, nothing switched; the video m-line is there, silent
    time.sleep(1.0)
    assert none.frames(sender) == 0 and switched(none, sender) == []
    assert [t.stream_id for t in none.tracks] == [sender.connection_id]
    # the sender itself gets none of these
    assert sender.notifies("simulcast.switched") == []


def test_an_invalid_simulcast_request_rid_is_refused(local_sora, sora):
    from tests.conftest import Recorder

    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="bad-rid",
                                  simulcast=True, simulcast_request_rid="r 1!")
    rec = Recorder(conn)
    conn.connect()
    try:
        assert rec.disconnected.wait(15), rec.events
        assert not rec.connected.is_set()
        assert ("ws_close", 4000, "INVALID-SIMULCAST-REQUEST-RID") in [e[:3] for e in rec.events], rec.events
    finally:
        conn.disconnect()


def test_fallback_when_a_layer_stops_and_the_switch_back_up_are_notified(local_sora, clients, monkeypatch):
    from sora_sdk.testing import media as media_module

    sender = clients("fall", "sendonly", send=True, simulcast=True)
    layers_known(local_sora, "fall", sender)
    router = local_sora._registry.channel("fall").media
    r2_ssrc = router._senders[sender.connection_id].layers["r2"][1]
    real = media_module._received_packets
    layer = router._senders[sender.connection_id]

    def hidden(session):  # r2 is not there, as far as the server can tell (the poll leaves it stale)
        return {k: v for k, v in real(session).items() if k != r2_ssrc}

    def frozen(session):  # r2 stops arriving: its packet count no longer grows
        counts = real(session)
        if r2_ssrc in counts:
            counts[r2_ssrc] = layer.layer_packets["r2"][0]  # what the last poll saw
        return counts

    monkeypatch.setattr(media_module, "_received_packets", hidden)
    with router._lock:
        router._senders[sender.connection_id].stale.add("r2")
    receiver = clients("fall", "recvonly", simulcast=True, simulcast_request_rid="r2")
    assert receiver.wait_size(sender, SIZES["r1"]), receiver.size(sender)
    (first,) = wait_switched(receiver, sender, 1)
    assert (first["request_rid"], first["auto_rids"]) == ("r2", ["r0", "r1"]), first
    assert steps([first]) == [("none", "r1", "receiver")]

    # r2 arrives again: switched up, on the same track
    monkeypatch.setattr(media_module, "_received_packets", real)
    assert receiver.wait_size(sender, SIZES["r2"]), receiver.size(sender)
    up = wait_switched(receiver, sender, 2)[1]
    assert steps([up]) == [("r1", "r2", "sender")] and up["auto_rids"] == ["r0", "r1", "r2"], up

    # r2 stops (no new packet for LAYER_TIMEOUT s): back down to r1
    started = time.monotonic()
    monkeypatch.setattr(media_module, "_received_packets", frozen)
    down = wait_switched(receiver, sender, 3, timeout=media_module.LAYER_TIMEOUT + 10)[2]
    print("r2 stops -> simulcast.switched r2->r1: %.2f s (LAYER_TIMEOUT %.1f s)"
          % (time.monotonic() - started, media_module.LAYER_TIMEOUT))
    assert steps([down]) == [("r2", "r1", "sender")] and down["request_rid"] == "r2", down
    assert receiver.wait_size(sender, SIZES["r1"]), receiver.size(sender)
    assert len([t for t in receiver.conn._tracks.values() if t.kind == "video"]) == 1
    monkeypatch.setattr(media_module, "_received_packets", real)


def test_spotlight_focus_changes_are_notified(local_sora, clients):
    first = clients("spot-sw", "sendonly", send=True, spotlight=True)
    second = clients("spot-sw", "sendonly", send=True, spotlight=True)
    layers_known(local_sora, "spot-sw", first)
    layers_known(local_sora, "spot-sw", second)
    default = clients("spot-sw", "recvonly", spotlight=True)  # focused at r2, unfocused at r0
    none = clients("spot-sw", "recvonly", spotlight=True, spotlight_focus_rid="r1", spotlight_unfocus_rid="none")
    assert default.wait_size(first, SIZES["r2"]) and default.wait_size(second, SIZES["r0"])
    assert [(n["request_rid"], n["current_rid"], n["trigger"]) for n in wait_switched(default, first, 1)] == \
        [("r2", "r2", "receiver")]
    assert [(n["request_rid"], n["current_rid"]) for n in wait_switched(default, second, 1)] == [("r0", "r0")]
    assert steps(wait_switched(none, first, 1)) == [("none", "r1", "receiver")]
    assert switched(none, second) == []  # unfocused at "none": never forwarded

    assert local_sora.spotlight_focus("spot-sw", second.connection_id)
    assert default.wait_size(second, SIZES["r2"]) and default.wait_size(first, SIZES["r0"])
    to_focused = wait_switched(default, second, 2)[1]
    to_unfocused = wait_switched(default, first, 2)[1]
    assert (steps([to_focused]), to_focused["request_rid"]) == ([("r0", "r2", "sender")], "r2"), to_focused
    assert (steps([to_unfocused]), to_unfocused["request_rid"]) == ([("r2", "r0", "sender")], "r0"), to_unfocused
    # the "none" receiver: the newly focused sender comes in at r1, the other one stops ("none")
    assert steps(wait_switched(none, second, 1)) == [("none", "r1", "sender")]
    stopped = wait_switched(none, first, 2)[1]
    assert steps([stopped]) == [("r1", "none", "sender")] and stopped["request_rid"] == "none", stopped
    for receiver in (default, none):
        for sender in (first, second):
            assert all(n["sender_connection_id"] == sender.connection_id for n in switched(receiver, sender))
