"""The shipped type stubs are valid and describe the API with real numpy array types."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import sora_sdk

STUB = os.path.join(os.path.dirname(sora_sdk.__file__), "__init__.pyi")


def test_stubs_type_check_with_mypy(tmp_path):
    pytest.importorskip("mypy", reason="mypy is installed for CPython only")
    user = tmp_path / "user.py"
    user.write_text(
        "import numpy as np\n"
        "import sora_sdk\n"
        "sora = sora_sdk.Sora()\n"
        "src = sora.create_video_source()\n"
        "src.on_captured(np.zeros((2, 2, 3), np.uint8))\n"
        "conn = sora.create_connection(signaling_urls=['ws://127.0.0.1/'], role='sendonly', channel_id='c')\n"
        "conn.on_disconnect = lambda code, message: None\n"
        "ok: bool = conn.send_data_channel('#x', b'')\n"
        "bad: int = conn.get_stats()\n"  # str, not int: must be reported
    )
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", STUB, str(user)],
                            capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(STUB)))
    out = result.stdout + result.stderr
    assert "user.py:9: error" in out, out
    assert out.count("error") == 1 + out.count("Found 1 error"), out


def test_aio_stubs_type_check_with_mypy(tmp_path):
    pytest.importorskip("mypy", reason="mypy is installed for CPython only")
    user = tmp_path / "user_aio.py"
    user.write_text(
        "import asyncio\n"
        "from sora_sdk.aio import AsyncSora, Disconnected\n"
        "async def main() -> None:\n"
        "    async with AsyncSora() as sora:\n"
        "        conn = await sora.connect(signaling_urls=['ws://127.0.0.1/'], role='recvonly', channel_id='c')\n"
        "        async for track in conn.tracks():\n"
        "            async for frame in conn.frames(track):\n"
        "                pass\n"
        "        async for label, data in conn.messages('#c'):\n"
        "            ok: bool = await conn.send(label, data)\n"
        "        stats = await conn.get_stats()\n"
        "        bad: str = conn.dropped(track)\n"  # int, not str: must be reported
    )
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", os.path.join(os.path.dirname(STUB),
                             "aio.pyi"), str(user)], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(STUB)))
    out = result.stdout + result.stderr
    assert "user_aio.py:12: error" in out, out
    assert out.count("error") == 1 + out.count("Found 1 error"), out


def test_stub_uses_numpy_array_types_not_arraylike():
    with open(STUB, encoding="utf-8") as f:
        text = f.read()
    assert "NDArray[numpy.uint8]" in text and "NDArray[numpy.int16]" in text
    assert "ArrayLike" not in text
