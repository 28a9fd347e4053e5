"""Sending H.264 with OpenH264 loaded from the path the application gives (`Sora(openh264=path)`).

Debian's libopenh264 is copied to a private directory under another name (as Cisco's binary would be
downloaded), and a fresh interpreter sends through the local Sora server with `Sora(openh264=copy)`:
the copy (not the system library) must be the one mapped into the process, the receiver must decode
the picture, and stats must name OpenH264 as the encoder.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

import sora_sdk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Debian's libopenh264 by its soname link: libopenh264.so.7 (libopenh264-7) on Debian 12, .so.8 on Debian 13.
SYSTEM_OPENH264 = sora_sdk.codec.system_openh264()
ENGINE_HAS_OPENH264 = bool(sora_sdk._ffi.lib.sora_c_element_available(b"openh264enc"))

SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import sora_sdk
from sora_sdk import codec
from sora_sdk.testing import LocalSora
from tests.conftest import Recorder, wait_until
from tests.media_pump import Pump, W, H

result = {}
with LocalSora() as server:
    sender_sora = sora_sdk.Sora(openh264=sys.argv[2])
    result["mapped"] = codec._mapped_openh264()
    receiver_sora = sora_sdk.Sora()
    frames = []
    receiver = receiver_sora.create_connection(signaling_urls=[server.signaling_url], role="recvonly",
                                               channel_id="h264")
    rrec = Recorder(receiver)
    def on_track(track):
        if track.kind == "video":
            sink = sora_sdk.SoraVideoSink(track)
            sink.on_frame = lambda f: frames.append((f.width, f.height, f.data()[H // 2, W // 4].tolist()))
            frames.append(sink)
    receiver.on_track = on_track
    receiver.connect()
    assert rrec.connected.wait(15)
    video = sender_sora.create_video_source()
    audio = sender_sora.create_audio_source(1, 48000)
    sender = sender_sora.create_connection(signaling_urls=[server.signaling_url], role="sendonly",
                                           channel_id="h264", video_source=video, audio_source=audio,
                                           video_codec_type="H264", video_bit_rate=500)
    srec = Recorder(sender)
    sender.connect()
    assert srec.connected.wait(15)
    pump = Pump(video, audio, ((40, 160, 220), (200, 60, 30)))
    ok = wait_until(lambda: len([f for f in frames if isinstance(f, tuple)]) >= 20, 15)
    pump.stop()
    stats = json.loads(sender.get_stats())
    result["decoded"] = [f for f in frames if isinstance(f, tuple)][-1] if ok else None
    result["encoder"] = [s.get("encoderImplementation") for s in stats
                         if s.get("type") == "outbound-rtp" and s.get("kind") == "video"]
    result["codec"] = [s.get("mimeType") for s in stats if s.get("type") == "codec"]
    sender.disconnect(); receiver.disconnect()
    sender_sora.close(); receiver_sora.close()
print("RESULT " + json.dumps(result))
"""


def _run(library: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ROOT, library], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, "exit %d\n%s\n%s" % (proc.returncode, proc.stdout[-2000:],
                                                                proc.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.skipif(not ENGINE_HAS_OPENH264,
                    reason="the engine has no OpenH264 encoder element (gstreamer1.0-plugins-bad)")
def test_h264_is_sent_with_the_openh264_from_the_given_path(tmp_path):
    # The engine's openh264enc links to Debian's libopenh264, so it must be found (whichever soname).
    assert SYSTEM_OPENH264, "openh264enc is registered but no libopenh264.so.<N> was found"
    real = os.path.realpath(SYSTEM_OPENH264)  # e.g. libopenh264.so.2.6.0 behind libopenh264.so.8
    version = real.rsplit(".so.", 1)[1]
    major = SYSTEM_OPENH264.rsplit(".so.", 1)[1]
    private = tmp_path / ("libopenh264-%s-linux64.%s.so" % (version, major))  # as Cisco names its binaries
    shutil.copyfile(real, private)
    result = _run(str(private))
    assert result["mapped"] == [str(private)], result["mapped"]  # the copy, and no other OpenH264
    assert result["decoded"] is not None, result
    width, height, pixel = result["decoded"]
    assert (width, height) == (320, 240)
    assert all(abs(a - b) <= 16 for a, b in zip(pixel, (40, 160, 220))), pixel
    assert result["encoder"] == ["OpenH264"], result["encoder"]


def test_bad_openh264_paths_fail_at_sora_creation(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sora_sdk.Sora(openh264=str(tmp_path / "missing.so"))
    not_a_library = tmp_path / "libopenh264.so"
    not_a_library.write_bytes(b"not an ELF file")
    with pytest.raises(ValueError, match="could not be loaded"):
        sora_sdk.Sora(openh264=str(not_a_library))
    with pytest.raises(ValueError, match="directory"):
        sora_sdk.Sora(openh264=str(tmp_path))
