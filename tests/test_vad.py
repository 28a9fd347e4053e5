"""SoraVAD on real speech (espeak-ng), silence and noise, at the rates and layouts sinks deliver."""
from __future__ import annotations

import subprocess
import wave

import numpy as np
import pytest

import sora_sdk
from sora_sdk.media.audio_sink import SoraAudioFrame


def _frames(samples: np.ndarray, rate: int):
    step = rate // 100
    for start in range(0, samples.shape[0] - step, step):
        yield SoraAudioFrame(samples[start:start + step], rate, None, _internal=True)


def _probabilities(samples: np.ndarray, rate: int) -> np.ndarray:
    vad = sora_sdk.SoraVAD()
    return np.array([vad.analyze(frame) for frame in _frames(samples, rate)])


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = tmp_path_factory.mktemp("vad") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello, this is a test of the voice activity detector. "
                    "It should find speech in this sentence and nothing in silence or noise."], check=True)
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return data.reshape(-1, 1), rate


def test_speech_scores_high(speech):
    samples, rate = speech
    probabilities = _probabilities(samples, rate)
    assert probabilities.mean() > 0.5
    assert (probabilities > 0.9).mean() > 0.4


def test_silence_and_noise_score_low():
    rng = np.random.default_rng(7)
    rate = 48000
    silence = np.zeros((rate * 2, 1), np.int16)
    white = rng.normal(0, 4000, (rate * 2, 1)).astype(np.int16)
    brown = (np.cumsum(rng.normal(0, 300, rate * 2)) // 4).astype(np.int16).reshape(-1, 1)
    assert _probabilities(silence, rate).max() == 0.0
    assert _probabilities(white, rate).mean() < 0.2
    assert _probabilities(brown, rate).mean() < 0.2


def test_rate_and_channels_do_not_change_the_verdict(speech):
    samples, rate = speech
    resampled = np.interp(np.arange(samples.shape[0] * 48000 // rate) * rate / 48000.0,
                          np.arange(samples.shape[0]), samples[:, 0]).astype(np.int16)
    stereo = np.stack([resampled, resampled], axis=1)
    assert abs(_probabilities(stereo, 48000).mean() - _probabilities(samples, rate).mean()) < 0.1


def test_analyze_rejects_what_is_not_an_audio_frame():
    with pytest.raises(TypeError):
        sora_sdk.SoraVAD().analyze(np.zeros((480, 1), np.int16))
