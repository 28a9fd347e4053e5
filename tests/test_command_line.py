"""The command lines a newcomer runs first: `python -m sora_sdk.demo` and `python -m sora_sdk.testing`."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from sora_sdk import demo
from sora_sdk.testing import LocalSora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None, timeout=120):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_DEMO_", "SORA_CHANNEL_ID",
                                                                          "SORA_SIGNALING_URLS", "SORA_METADATA"))}
    environ.update(env or {})
    return subprocess.run([sys.executable] + list(args), cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)


def number(pattern, text):
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return float(match.group(1))


@pytest.mark.timeout(120)
def test_demo_round_trip_on_the_embedded_server():
    done = run("-m", "sora_sdk.demo", "--seconds", "3")
    out = done.stdout
    assert done.returncode == 0, (out, done.stderr)
    assert re.search(r"watch it in a browser: http://127\.0\.0\.1:\d+/viewer/\?channel_id=sora-sdk-demo", out), out
    sent = number(r"sent (\d+) frames 640x480 \(VP8\)", out)
    received = number(r"received (\d+) frames 640x480", out)
    audio = number(r"frames 640x480 and ([\d.]+) s of audio \(48000 Hz, 1 ch", out)
    level = number(r"level (-?[\d.]+) dBFS", out)
    median = number(r"latency \(on_captured -> on_frame\): median (\d+) ms", out)
    assert sent >= 60 and received >= sent / 3, out
    assert audio >= 1.0 and -30 < level < -5, out  # the tone (8000 / 32768 = -15 dBFS), not silence
    assert 0 < median < 1000, out
    assert out.rstrip().endswith("round trip: ok"), out
    assert done.stderr.strip() == "" or "Traceback" not in done.stderr, done.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", [
    "VP9", "AV1", "H264", "H265",
])
def test_demo_round_trip_per_codec(codec):
    done = run("-m", "sora_sdk.demo", "--seconds", "3", "--codec", codec)
    out = done.stdout
    assert re.search(r"RTP bytes: video [1-9]\d*, audio [1-9]\d*", out), (out, done.stderr)
    assert number(r"received (\d+) frames 640x480", out) > 0, out
    assert done.returncode == 0 and out.rstrip().endswith("round trip: ok"), (out, done.stderr)


@pytest.mark.timeout(120)
def test_demo_ends_against_a_given_server_as_sender_and_as_receiver():
    """--signaling-url as against a real Sora: one process sends, another receives on the same channel."""
    with LocalSora() as server:
        common = ["--signaling-url", server.signaling_url, "--channel-id", "cli-ch"]
        receiver = subprocess.Popen([sys.executable, "-m", "sora_sdk.demo", "--role", "recvonly", "--seconds", "8"]
                                    + common, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    universal_newlines=True)
        sender = run("-m", "sora_sdk.demo", "--role", "sendonly", "--seconds", "5", "--codec", "vp9", *common)
        out, err = receiver.communicate(timeout=60)
    assert sender.returncode == 0, (sender.stdout, sender.stderr)
    assert "local Sora server" not in sender.stdout and "sendonly: ok" in sender.stdout, sender.stdout
    assert re.search(r"sent \d+ frames 640x480 \(VP9\)", sender.stdout), sender.stdout
    assert receiver.returncode == 0, (out, err)
    assert number(r"received (\d+) frames 640x480", out) > 30, out
    assert "recvonly: ok" in out, out


@pytest.mark.timeout(60)
def test_demo_reports_a_failed_connection_in_one_line():
    done = run("-m", "sora_sdk.demo", "--signaling-url", "ws://127.0.0.1:9/signaling", "--seconds", "1")
    assert done.returncode == 1
    assert re.fullmatch(r"receiver: could not connect to ws://127\.0\.0\.1:9/signaling: "
                        r"WEBSOCKET_HANDSHAKE_FAILED .*Connection refused.*\n", done.stdout), done.stdout
    assert "Traceback" not in done.stderr, done.stderr


def test_demo_help_lists_every_option_and_its_environment_variable():
    done = run("-m", "sora_sdk.demo", "--help", env={"COLUMNS": "300"})  # no hyphenated line breaks
    assert done.returncode == 0 and done.stderr == ""
    text = " ".join(done.stdout.split())
    for option, variable, _, _, _ in demo.OPTIONS:
        assert option in text and variable in text, (option, variable)
    assert "default sora-sdk-demo" in text and "default both" in text and "default VP8" in text


@pytest.mark.parametrize("args,env,message", [
    (["--seconds", "abc"], {}, "argument --seconds: 'abc' is not a number of seconds"),
    (["--seconds", "0"], {}, "argument --seconds: '0' is not between 0 and 86400 seconds"),
    (["--seconds", "nan"], {}, "argument --seconds: 'nan' is not between 0 and 86400 seconds"),
    (["--metadata", "{oops"], {}, "argument --metadata: '{oops' is not JSON"),
    (["--role", "viewer"], {}, "argument --role: 'viewer' is not one of both, sendonly, recvonly"),
    (["--codec", "MPEG2"], {}, "argument --codec: 'MPEG2' is not one of VP8, VP9, AV1, H264, H265"),
    (["--signaling-url", "https://sora.example.com"], {}, "is not a ws:// or wss:// URL"),
    (["--channel-id", "a b"], {}, "is not a channel id"),
    (["--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
    ([], {"SORA_DEMO_SECONDS": "ten"}, "SORA_DEMO_SECONDS (from the environment): 'ten' is not a number"),
    ([], {"SORA_METADATA": "{"}, "SORA_METADATA (from the environment): '{' is not JSON"),
    ([], {"SORA_SIGNALING_URLS": "sora.example.com"}, "SORA_SIGNALING_URLS (from the environment): "),
])
def test_demo_bad_values_are_one_line_errors(args, env, message):
    done = run("-m", "sora_sdk.demo", *args, env=env)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m sora_sdk.demo: error: "), done.stderr
    assert message in lines[0], lines[0]


def test_demo_environment_variables_are_the_defaults_and_options_win():
    environ = {"SORA_SIGNALING_URLS": "wss://a.example/signaling, wss://b.example/signaling",
               "SORA_CHANNEL_ID": "env-ch", "SORA_METADATA": '{"access_token": "t"}', "SORA_DEMO_ROLE": "RECVONLY",
               "SORA_DEMO_CODEC": "av1", "SORA_DEMO_SECONDS": "2.5"}
    args = demo.parse_args([], environ)
    assert args.signaling_url == ["wss://a.example/signaling", "wss://b.example/signaling"]
    assert (args.channel_id, args.metadata, args.role, args.codec, args.seconds) == \
        ("env-ch", {"access_token": "t"}, "recvonly", "AV1", 2.5)
    args = demo.parse_args(["--channel-id", "cli-ch", "--role", "sendonly", "--seconds", "1"], environ)
    assert (args.channel_id, args.role, args.seconds) == ("cli-ch", "sendonly", 1.0)
    args = demo.parse_args([], {})
    assert (args.signaling_url, args.channel_id, args.metadata, args.role, args.codec, args.seconds) == \
        (None, "sora-sdk-demo", None, "both", "VP8", 5.0)


def test_the_counter_drawn_by_the_demo_reads_back():
    import numpy as np

    frame = np.zeros((demo.HEIGHT, demo.WIDTH, 3), np.uint8)
    for counter in (0, 1, 12345, (1 << demo.COUNTER_BITS) - 1):
        demo.draw_pattern(counter, frame)
        demo.write_counter(frame, counter)
        assert demo.read_counter(frame) == counter
    frame[:] = 200
    assert demo.read_counter(frame) is None  # another sender's picture has no guard cells


def test_server_help_gives_the_default_port_and_says_it_prints_the_urls():
    done = run("-m", "sora_sdk.testing", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--port PORT" in text and "default 0: a free port is picked" in text, text
    assert "signaling_url=" in text and "viewer_url=" in text and "prints" in text, text
