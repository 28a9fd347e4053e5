"""The README's examples run: every ```python block of README.md, each in its own interpreter, against LocalSora.

The blocks use Sora's placeholder URL (wss://sora.example.com/signaling), which is replaced by the local
server's; a sender (the demo, --role sendonly) keeps video and audio flowing on `my-channel` for the receiving
examples. Each block must exit 0 without a traceback; the blocks of the sections in EXPECTED must also print
what shows that they did their work (frames and audio received, a message heard, a failure reported).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import List, Tuple

import pytest

from sora_sdk.testing import LocalSora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLACEHOLDER = "wss://sora.example.com/signaling"


def python_blocks(text: str) -> List[Tuple[str, str]]:
    """(id, code) of each ```python block; the id is the nearest heading above it, numbered when repeated."""
    blocks, heading, seen = [], "top", {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
        elif line.strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            seen[heading] = seen.get(heading, 0) + 1
            blocks.append(("%s-%d" % (heading, seen[heading]), "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return blocks


with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as _f:
    BLOCKS = python_blocks(_f.read())

# What a block must print (regular expressions), by block id.
EXPECTED = {
    "sending-1": [r"sent bytes: \{'(audio|video)': [1-9]\d*, '(audio|video)': [1-9]\d*\}"],
    "receiving-video-and-audio-1": [r"received [1-9]\d* video frames \(\(\d+, \d+\)\) and [0-9.]*[1-9][0-9.]* s of audio"],
    "receiving-video-and-audio-2": [r"read: \(1600, 1\)"],
    "data-channels-1": [r"sent: True", r"bob got #chat b'hello, bob'"],
    "handling-failures-1": [r"ended: WEBSOCKET_HANDSHAKE_FAILED - ", r"as expected: ", r"bad argument: "],
    "asyncio-sora-sdk-aio-1": [r"got 30 frames of \(\d+, \d+, 3\), [1-9]\d* stats entries, \d+ dropped"],
}


def test_the_readme_has_the_examples_it_promises():
    ids = [block_id for block_id, _ in BLOCKS]
    assert set(EXPECTED) <= set(ids), ids
    for _, code in BLOCKS:
        compile(code, "README.md", "exec")


@pytest.fixture(scope="module")
def server_with_sender():
    with LocalSora() as server:
        sender = subprocess.Popen(
            [sys.executable, "-m", "sora_sdk.demo", "--signaling-url", server.signaling_url,
             "--channel-id", "my-channel", "--role", "sendonly", "--seconds", "240"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        try:
            deadline = time.monotonic() + 30
            while not any(c.get("role") == "sendonly" for c in server.connections("my-channel")):
                assert sender.poll() is None and time.monotonic() < deadline, sender.communicate()[0]
                time.sleep(0.1)
            yield server
        finally:
            sender.terminate()
            sender.wait(30)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block_id,code", BLOCKS, ids=[block_id for block_id, _ in BLOCKS])
def test_readme_example_runs(server_with_sender, tmp_path, block_id, code):
    script = tmp_path / ("%s.py" % block_id)
    script.write_text(code.replace(PLACEHOLDER, server_with_sender.signaling_url), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=90)
    print(done.stdout)
    assert done.returncode == 0, done.stdout
    assert "Traceback" not in done.stdout, done.stdout
    for pattern in EXPECTED.get(block_id, []):
        assert re.search(pattern, done.stdout), (pattern, done.stdout)
