"""The engine context's lifetime: close() waits for shim calls in flight on other threads, so a call
that passed the "closed?" check never runs on freed handles; calls after close raise SoraInvalidState."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import sora_sdk
from sora_sdk.context import CLOSE_WAIT, Context
from sora_sdk.errors import SoraInvalidState


def test_close_waits_for_a_call_in_flight():
    ctx = Context()
    entered, release = threading.Event(), threading.Event()
    left_at = []

    def call():
        with ctx.use():
            entered.set()
            release.wait(5)
            left_at.append(time.monotonic())

    worker = threading.Thread(target=call)
    worker.start()
    assert entered.wait(5)
    threading.Timer(0.3, release.set).start()
    ctx.close()
    closed_at = time.monotonic()
    worker.join(5)
    assert left_at and closed_at >= left_at[0], "close() returned while a call still used the context"
    with pytest.raises(SoraInvalidState):
        with ctx.use():
            pass


def test_close_inside_a_call_of_the_same_thread_does_not_wait_for_itself():
    ctx = Context()
    started = time.monotonic()
    with ctx.use():
        ctx.close()
    assert time.monotonic() - started < CLOSE_WAIT / 2
    assert ctx.closed


def test_sources_pushing_while_the_sora_closes_stop_with_invalid_state():
    """Pump threads race Sora.close(): every push either lands or raises SoraInvalidState, nothing else."""
    for _ in range(5):
        sora = sora_sdk.Sora()
        video = sora.create_video_source()
        audio = sora.create_audio_source(1, 48000)
        frame = np.zeros((120, 160, 3), np.uint8)
        samples = np.zeros((480, 1), np.int16)
        errors, stop = [], threading.Event()

        def pump(push):
            while not stop.is_set():
                try:
                    push()
                except SoraInvalidState:
                    return
                except Exception as exc:  # noqa: BLE001 - the test reports it
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=pump, args=(lambda: video.on_captured(frame),)),
                   threading.Thread(target=pump, args=(lambda: audio.on_data(samples),))]
        for t in threads:
            t.start()
        time.sleep(0.05)
        sora.close()
        stop.set()
        for t in threads:
            t.join(5)
        assert not errors, errors
        with pytest.raises(SoraInvalidState):
            video.on_captured(frame)
