"""Data channels end to end through the local server: DC signaling, `#` relay, compression, closing over DC."""
from __future__ import annotations

import json

import pytest

import sora_sdk
from tests.conftest import Recorder, wait_until

Code = sora_sdk.SoraSignalingErrorCode


def _client(sora, server, channel_id, **kwargs):
    kwargs.setdefault("data_channel_signaling", True)
    kwargs.setdefault("data_channels", [{"label": "#chat", "direction": "sendrecv"}])
    conn = sora.create_connection(signaling_urls=[server.signaling_url], role="sendrecv", channel_id=channel_id,
                                  audio=False, video=False, **kwargs)
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    assert wait_until(lambda: rec.of("switched"), 10), rec.events
    return conn, rec


def test_switched_then_user_messages_relay_both_ways(local_sora, sora):
    a, ra = _client(sora, local_sora, "dc")
    b, rb = _client(sora, local_sora, "dc")
    assert wait_until(lambda: ("#chat",) in ra.of("data_channel") and ("#chat",) in rb.of("data_channel"))
    for label in ("signaling", "notify", "push", "stats"):
        assert (label,) in ra.of("data_channel")
    assert a.send_data_channel("#chat", b"hello from a") is True
    assert wait_until(lambda: ("#chat", b"hello from a") in rb.of("message"))
    assert b.send_data_channel("#chat", bytearray(b"\x00\x01binary")) is True
    assert wait_until(lambda: ("#chat", b"\x00\x01binary") in ra.of("message"))
    # a label that is not open is refused, never reported as sent
    assert a.send_data_channel("#nope", b"x") is False
    stats = json.loads(a.get_stats())
    chat = [s for s in stats if s["type"] == "data-channel" and s["label"] == "#chat"]
    assert chat and chat[0]["messagesSent"] == 1 and chat[0]["messagesReceived"] == 1
    assert chat[0]["bytesSent"] == len(b"hello from a") and chat[0]["state"] == "open"
    b.disconnect()
    a.disconnect()


def test_notify_arrives_over_the_notify_channel_after_switch(local_sora, sora):
    a, ra = _client(sora, local_sora, "dc-notify")
    b, rb = _client(sora, local_sora, "dc-notify")
    assert wait_until(lambda: any(n.get("event_type") == "connection.created" and
                                  n.get("connection_id") == rb.connection_id for n in ra.notifies))
    local_sora.push("dc-notify", {"over": "dc"})
    assert wait_until(lambda: any(json.loads(p[0]).get("data") == {"over": "dc"} for p in rb.of("push")))
    b.disconnect()
    a.disconnect()


def test_disconnect_over_the_signaling_channel(local_sora, sora):
    a, ra = _client(sora, local_sora, "dc-bye")
    a.disconnect()
    code, message = ra.disconnect
    assert code == Code.CLOSE_SUCCEEDED
    assert message == "Succeeded to close Websocket (DC signaling is enabled)"
    assert wait_until(lambda: not local_sora.connections("dc-bye"))


def test_ignore_disconnect_websocket_closes_the_websocket_itself(local_sora, sora):
    a, ra = _client(sora, local_sora, "dc-ws", ignore_disconnect_websocket=True)
    assert wait_until(lambda: (1000, "SELF-CLOSED") in ra.of("ws_close"))
    assert json.loads(ra.of("switched")[0][0]) == {"type": "switched", "ignore_disconnect_websocket": True}
    b, rb = _client(sora, local_sora, "dc-ws", ignore_disconnect_websocket=True)
    assert wait_until(lambda: ("#chat",) in rb.of("data_channel"))
    assert b.send_data_channel("#chat", b"still here")
    assert wait_until(lambda: ("#chat", b"still here") in ra.of("message"))
    b.disconnect()
    a.disconnect()
    assert ra.disconnect == (Code.CLOSE_SUCCEEDED, "Succeeded to close DataChannel")


def test_compressed_labels_are_inflated_on_receipt(local_sora, sora):
    channels = [{"label": "#chat", "direction": "sendrecv", "compress": True}]
    a, ra = _client(sora, local_sora, "dc-zlib", data_channels=channels)
    b, rb = _client(sora, local_sora, "dc-zlib", data_channels=channels)
    assert wait_until(lambda: ("#chat",) in rb.of("data_channel"))
    text = b"compress me " * 100
    assert a.send_data_channel("#chat", text)
    assert wait_until(lambda: ("#chat", text) in rb.of("message"))
    offer = json.loads(ra.of("set_offer")[0][0])
    assert next(c for c in offer["data_channels"] if c["label"] == "#chat")["compress"] is True
    stats = json.loads(a.get_stats())
    chat = next(s for s in stats if s["type"] == "data-channel" and s["label"] == "#chat")
    assert chat["bytesSent"] == len(text)  # counted before compression, as the application sees it
    b.disconnect()
    a.disconnect()


def test_send_data_channel_argument_errors(local_sora, sora):
    a, ra = _client(sora, local_sora, "dc-args")
    with pytest.raises(TypeError):
        a.send_data_channel("#chat", "text is not bytes")
    with pytest.raises(TypeError):
        a.send_data_channel(b"#chat", b"x")
    with pytest.raises(sora_sdk.SoraInvalidArgument):
        a.send_data_channel("#chat", b"")  # the engine cannot send empty messages: a clear error, not a lie
    a.disconnect()
    with pytest.raises(sora_sdk.SoraInvalidState):
        a.send_data_channel("#chat", b"late")


def test_bulk_16_kib_messages_arrive_whole_and_in_order(local_sora, sora):
    """Far more than SCTP's send buffer in flight (256 x 16 KiB), so the sender keeps finding it full and retrying
    (csrc/src/sctpwake.c shortens each wait): every message arrives once, in order, byte for byte."""
    import threading

    a, ra = _client(sora, local_sora, "dc-bulk")
    received, cond = [], threading.Condition()

    def on_message(label, data):
        with cond:
            received.append(bytes(data))
            cond.notify_all()
    b, rb = _client(sora, local_sora, "dc-bulk")
    b.on_message = on_message
    assert wait_until(lambda: ("#chat",) in ra.of("data_channel") and ("#chat",) in rb.of("data_channel"))
    count, size, window = 1200, 16384, 256

    def message(i):
        return i.to_bytes(4, "big") + bytes([i % 251]) * (size - 4)
    for i in range(count):
        with cond:
            assert cond.wait_for(lambda: i - len(received) < window, 30), (i, len(received))
        assert a.send_data_channel("#chat", message(i)) is True
    with cond:
        assert cond.wait_for(lambda: len(received) >= count, 60), len(received)
    assert len(received) == count
    for i, data in enumerate(received):
        assert data == message(i), (i, data[:8])
    b.disconnect()
    a.disconnect()


SCTP_PROBE = "import sora_sdk, time; time.sleep(1.5)"  # (the import's warm-up loads the sctp plugin)


@pytest.mark.parametrize("sleep, slots", [(None, "1 slot(s)"), ("1", "0 slot(s)")])
def test_the_sctp_plugins_full_buffer_wait_is_redirected(sleep, slots):
    """Where the sctp plugin sleeps on a full send buffer, its one call to g_cond_wait_until goes to the shim's
    capped wait (on Debian 12 and 13); SORA_SDK_SCTP_SLEEP=1 leaves the plugin alone."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, GST_DEBUG="default:5", GST_DEBUG_NO_COLOR="1",
               PYTHONPATH=os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH")] if p))
    env.pop("SORA_SDK_SCTP_SLEEP", None)
    env.pop("SORA_SDK_NO_WARM_UP", None)
    if sleep:
        env["SORA_SDK_SCTP_SLEEP"] = sleep
    out = subprocess.run([sys.executable, "-c", SCTP_PROBE], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if "sctp send-buffer wake-up" in line]
    assert len(lines) == 1 and slots in lines[0], lines or out.stderr[-2000:]
