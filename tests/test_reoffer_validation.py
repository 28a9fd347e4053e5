"""Re-offers that cannot follow the current session end the connection as malformed (webrtcbin would abort the
process on a changed mid: `_create_answer_task: assertion failed: (g_strcmp0 (mid, last_mid) == 0)`)."""
from __future__ import annotations

import json

import pytest

import sora_sdk
from tests.conftest import Recorder


@pytest.mark.parametrize("change,expected", [
    (lambda sdp: sdp.replace("a=mid:audio0", "a=mid:zzz", 1), "changes the mid of m-line 0"),
    (lambda sdp: sdp.split("m=video")[0], "removes m-lines"),
    (lambda sdp: sdp.replace("a=rtcp-mux", "a=rtcp-mux\x00", 1), "NUL character"),
])
def test_bad_reoffer_ends_the_connection_with_internal_error(local_sora, sora, change, expected):
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="reoffer")
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    offer = json.loads(rec.of("set_offer")[0][0])["sdp"]
    bad = change(offer)
    assert bad != offer
    conn._context.post(lambda: conn._handle_server_input("a WebSocket message", conn._on_ws_message, conn._ws,
                                                         json.dumps({"type": "re-offer", "sdp": bad}).encode()))
    assert rec.disconnected.wait(10), rec.events
    code, message = rec.of("disconnect")[0]
    assert code == sora_sdk.SoraSignalingErrorCode.INTERNAL_ERROR and expected in message, message
