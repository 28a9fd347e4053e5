"""Tests of sora_sdk.enums and sora_sdk.codec.

Capability probing runs against the real GStreamer of this machine through
``gst-inspect-1.0 --exists`` (installed on the project's machines), injected
with the ``sora_sdk.codec._probe`` hook.  OpenH264 tests load Debian's real
libopenh264.  Logic that depends on hardware that is not here (NVIDIA,
Intel) is checked with probes that pretend elements are missing or present.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest

import sora_sdk
import sora_sdk.codec as codec_mod
from sora_sdk.codec import (
    SoraVideoCodecCapability,
    SoraVideoCodecPreference,
    create_video_codec_preference_from_implementation,
    engine_elements,
    get_video_codec_capability,
    select_element,
    validate_video_codec_preference,
)
from sora_sdk.enums import (
    SoraDegradationPreference,
    SoraLoggingSeverity,
    SoraSignalingDirection,
    SoraSignalingErrorCode,
    SoraSignalingType,
    SoraTrackState,
    SoraTransformableAudioFrameType,
    SoraTransformableFrameDirection,
    SoraVideoCodecImplementation,
    SoraVideoCodecType,
)

Impl = SoraVideoCodecImplementation
VType = SoraVideoCodecType
Pref = SoraVideoCodecPreference

GST_INSPECT = shutil.which("gst-inspect-1.0")
needs_gst = pytest.mark.skipif(GST_INSPECT is None, reason="gst-inspect-1.0 is not installed")

_gst_cache = {}

# Registered by the engine shim itself when it starts (csrc/src/av1rtp.c, dav1ddec.c, aomenc.c), not
# by a GStreamer plugin, so gst-inspect cannot see them: they exist exactly
# when the shim loads.
SHIM_ELEMENTS = {"sorartpav1pay", "sorartpav1depay", "soradav1dec", "soraav1enc"}


def _shim_loads():
    try:
        import sora_sdk._engine_probe  # noqa: F401
    except Exception:
        return False
    return True


def gst_exists(name):
    """Real GStreamer registry lookup (memoised: the registry does not change)."""
    if name in SHIM_ELEMENTS:
        return _shim_loads()
    if name not in _gst_cache:
        result = subprocess.run(
            [GST_INSPECT or "gst-inspect-1.0", "--exists", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _gst_cache[name] = result.returncode == 0
    return _gst_cache[name]


@pytest.fixture
def gst_probe(monkeypatch):
    monkeypatch.setattr(codec_mod, "_probe", gst_exists)
    return gst_exists


def fake_probe(monkeypatch, present):
    present = set(present)
    calls = []

    def probe(name):
        calls.append(name)
        return name in present

    monkeypatch.setattr(codec_mod, "_probe", probe)
    return calls


# Elements of this machine's software engine (GStreamer 1.22, Debian 12).
SOFTWARE = {
    "vp8enc", "vp8dec", "vp9enc", "vp9dec", "av1enc", "av1dec", "soraav1enc", "soradav1dec",
    "x264enc", "avdec_h264", "x265enc", "avdec_h265", "libde265dec",
    "rtpvp8pay", "rtpvp8depay", "rtpvp9pay", "rtpvp9depay",
    "rtph264pay", "rtph264depay", "rtph265pay", "rtph265depay",
    "sorartpav1pay", "sorartpav1depay",
}  # fmt: skip


def find_openh264():
    found = codec_mod.system_openh264()  # libopenh264.so.7 (Debian 12) or .so.8 (Debian 13)
    if found:
        return found
    for pattern in (
        "/usr/lib/*-linux-gnu/libopenh264.so.*",
        "/usr/lib64/libopenh264.so*",
        "/usr/local/lib/libopenh264.so*",
    ):
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                return path
    return None


OPENH264 = find_openh264()
# Skipped only when neither the library nor the engine's OpenH264 plugin is here: a plugin without the library
# it links to is a failure, not a skip.
needs_openh264 = pytest.mark.skipif(
    OPENH264 is None and not (GST_INSPECT and gst_exists("openh264enc")),
    reason="libopenh264 is not installed (Debian 12: libopenh264-7, Debian 13: libopenh264-8)",
)


# ---------------------------------------------------------------------------
# enums
# ---------------------------------------------------------------------------

ENUMS = [
    (SoraSignalingErrorCode, [
        ("CLOSE_SUCCEEDED", 0), ("CLOSE_FAILED", 1), ("INTERNAL_ERROR", 2),
        ("INVALID_PARAMETER", 3), ("WEBSOCKET_HANDSHAKE_FAILED", 4),
        ("WEBSOCKET_ONCLOSE", 5), ("WEBSOCKET_ONERROR", 6),
        ("PEER_CONNECTION_STATE_FAILED", 7), ("ICE_FAILED", 8),
        ("DATACHANNEL_CLOSED", 9),
    ]),
    (SoraSignalingType, [("WEBSOCKET", 0), ("DATACHANNEL", 1)]),
    (SoraSignalingDirection, [("SENT", 0), ("RECEIVED", 1)]),
    (SoraDegradationPreference, [
        ("DISABLED", 0), ("BALANCED", 3), ("MAINTAIN_FRAMERATE", 1),
        ("MAINTAIN_RESOLUTION", 2),
    ]),
    (SoraTrackState, [("LIVE", 0), ("ENDED", 1)]),
    (SoraLoggingSeverity, [
        ("VERBOSE", 0), ("INFO", 1), ("WARNING", 2), ("ERROR", 3), ("NONE", 4),
    ]),
    (SoraTransformableFrameDirection, [("UNKNOWN", 0), ("RECEIVER", 1), ("SENDER", 2)]),
    (SoraTransformableAudioFrameType, [("EMPTY", 0), ("SPEECH", 1), ("CN", 2)]),
    (SoraVideoCodecImplementation, [
        ("INTERNAL", 0), ("CISCO_OPENH264", 1), ("INTEL_VPL", 2),
        ("NVIDIA_VIDEO_CODEC_SDK", 3), ("AMD_AMF", 4), ("RASPI_V4L2M2M", 5),
    ]),
    (SoraVideoCodecType, [("VP8", 1), ("VP9", 2), ("H264", 4), ("H265", 5), ("AV1", 3)]),
]  # fmt: skip


@pytest.mark.parametrize("cls,members", ENUMS, ids=[c.__name__ for c, _ in ENUMS])
def test_enum_members_values_and_order(cls, members):
    import enum

    assert issubclass(cls, enum.IntEnum)
    assert [(m.name, m.value) for m in cls] == members
    for name, value in members:
        member = cls[name]
        assert cls(value) is member
        assert member == value
        assert isinstance(member, int)
        assert int(member) == value
        assert str(member) == "%s.%s" % (cls.__name__, name)
        assert repr(member) == "%s.%s" % (cls.__name__, name)
        assert f"{member}" == "%s.%s" % (cls.__name__, name)
        assert "%s" % member == "%s.%s" % (cls.__name__, name)
        assert "{}".format(member) == "%s.%s" % (cls.__name__, name)
        assert f"{member:d}" == str(value)
        assert pickle.loads(pickle.dumps(member)) is member


def test_enum_observed_behaviours():
    code = SoraSignalingErrorCode.CLOSE_SUCCEEDED
    assert str(code) == "SoraSignalingErrorCode.CLOSE_SUCCEEDED"
    assert code == 0
    assert SoraSignalingErrorCode(5) is SoraSignalingErrorCode.WEBSOCKET_ONCLOSE
    assert hash(code) == hash(0)
    assert {0: "x"}[code] == "x"
    assert json.dumps({"code": SoraSignalingErrorCode.ICE_FAILED}) == '{"code": 8}'
    assert SoraVideoCodecType.H264 + 1 == 5
    assert sorted([VType.AV1, VType.VP8]) == [VType.VP8, VType.AV1]
    with pytest.raises(ValueError):
        SoraSignalingErrorCode(99)


def test_enums_behave_the_same_on_another_interpreter():
    """str/repr/format are pinned, so Python 3.9 (e.g. PyPy) prints the same."""
    # enums.py is loaded on its own, so the other interpreter does not need the
    # package's compiled engine.
    import sora_sdk.enums

    script = (
        "import importlib.util\n"
        "spec = importlib.util.spec_from_file_location('sora_enums_check', %r)\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "C = mod.SoraSignalingErrorCode\n"
        "x = C.CLOSE_SUCCEEDED\n"
        "print(str(x), repr(x), f'{x}', '%%s' %% x, f'{x:d}', x == 0, C(5))\n"
    ) % os.path.abspath(sora_sdk.enums.__file__)
    expected = (
        "SoraSignalingErrorCode.CLOSE_SUCCEEDED SoraSignalingErrorCode.CLOSE_SUCCEEDED "
        "SoraSignalingErrorCode.CLOSE_SUCCEEDED SoraSignalingErrorCode.CLOSE_SUCCEEDED "
        "0 True SoraSignalingErrorCode.WEBSOCKET_ONCLOSE"
    )
    interpreters = [sys.executable]
    for other in ("pypy3", "/usr/bin/python3"):
        path = shutil.which(other)
        if not path or os.path.realpath(path) == os.path.realpath(sys.executable):
            continue
        usable = subprocess.run(
            [path, "-c", "import sys; assert sys.version_info >= (3, 9)"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if usable.returncode == 0:
            interpreters.append(path)
    for interpreter in interpreters:
        out = subprocess.run(
            [interpreter, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert out.returncode == 0, (interpreter, out.stderr)
        assert out.stdout.decode().strip() == expected, interpreter


# ---------------------------------------------------------------------------
# capability: real probing
# ---------------------------------------------------------------------------

CODEC_ORDER = [VType.VP8, VType.VP9, VType.H264, VType.H265, VType.AV1]
RTP = {
    VType.VP8: ("rtpvp8pay", "rtpvp8depay"),
    VType.VP9: ("rtpvp9pay", "rtpvp9depay"),
    VType.H264: ("rtph264pay", "rtph264depay"),
    VType.H265: ("rtph265pay", "rtph265depay"),
    VType.AV1: ("sorartpav1pay", "sorartpav1depay"),
}
INTERNAL_ELEMENTS = {
    VType.VP8: (["vp8enc"], ["vp8dec"]),
    VType.VP9: (["vp9enc"], ["vp9dec"]),
    VType.H264: (["x264enc"], ["avdec_h264"]),
    VType.H265: (["x265enc"], ["avdec_h265", "libde265dec"]),
    VType.AV1: (["soraav1enc", "av1enc"], ["soradav1dec", "av1dec", "dav1ddec"]),
}


def expected_internal(codec_type):
    """What the internal engine should say, computed straight from gst-inspect."""
    encoders, decoders = INTERNAL_ELEMENTS[codec_type]
    encoder = any(gst_exists(e) for e in encoders)
    decoder = any(gst_exists(d) for d in decoders)
    if RTP[codec_type] is not None:
        pay, depay = RTP[codec_type]
        encoder = encoder and gst_exists(pay)
        decoder = decoder and gst_exists(depay)
    return encoder, decoder


@needs_gst
def test_real_probe_internal_engine(gst_probe):
    capability = get_video_codec_capability()
    assert isinstance(capability, SoraVideoCodecCapability)
    engines = capability.engines
    assert engines[0].name is Impl.INTERNAL
    internal = engines[0]
    assert [c.type for c in internal.codecs] == CODEC_ORDER
    for c in internal.codecs:
        assert (c.encoder, c.decoder) == expected_internal(c.type), c.type
        assert isinstance(c.encoder, bool) and isinstance(c.decoder, bool)
        assert c.parameters.version is None
    # GStreamer 1.22 with libvpx/libaom is installed on the project machines.
    by_type = {c.type: c for c in internal.codecs}
    for t in (VType.VP8, VType.VP9, VType.AV1):
        assert by_type[t].encoder and by_type[t].decoder, t
    # Nothing about OpenH264 without a path.
    assert Impl.CISCO_OPENH264 not in [e.name for e in engines]
    assert "cisco_openh264" in capability.unavailable_reasons()


@needs_gst
def test_real_probe_hardware_engines_match_registry(gst_probe):
    capability = get_video_codec_capability()
    names = [e.name for e in capability.engines]
    nv_elements = ["nvh264enc", "nvcudah264enc", "nvh264dec", "nvh265enc",
                   "nvcudah265enc", "nvh265dec", "nvvp8dec", "nvvp9dec",
                   "nvav1dec", "nvav1enc"]  # fmt: skip
    qsv_elements = ["qsvh264enc", "qsvh265enc", "qsvvp9enc", "qsvav1enc",
                    "qsvh264dec", "qsvh265dec", "qsvvp9dec", "qsvav1dec"]  # fmt: skip
    reasons = capability.unavailable_reasons()
    if any(gst_exists(e) for e in nv_elements):
        assert Impl.NVIDIA_VIDEO_CODEC_SDK in names
    else:
        assert Impl.NVIDIA_VIDEO_CODEC_SDK not in names
        assert reasons["nvidia_video_codec_sdk"].startswith("nvcodec elements not registered")
    if any(gst_exists(e) for e in qsv_elements):
        assert Impl.INTEL_VPL in names
    else:
        assert Impl.INTEL_VPL not in names
        assert reasons["intel_vpl"].startswith("qsv elements not registered")
    assert Impl.AMD_AMF not in names
    assert Impl.RASPI_V4L2M2M not in names
    assert "amd_amf" in reasons and "raspi_v4l2m2m" in reasons
    # Engine order follows the official SDK.
    order = [Impl.INTERNAL, Impl.CISCO_OPENH264, Impl.INTEL_VPL, Impl.NVIDIA_VIDEO_CODEC_SDK]
    assert names == [n for n in order if n in names]


@needs_gst
def test_real_probe_to_json_shape(gst_probe):
    capability = get_video_codec_capability()
    doc = capability.to_json()
    assert list(doc) == ["engines"]
    internal = doc["engines"][0]
    assert list(internal) == ["name", "codecs", "parameters"]
    assert internal["name"] == "internal"
    assert internal["parameters"] == {}
    assert [c["type"] for c in internal["codecs"]] == ["VP8", "VP9", "H264", "H265", "AV1"]
    for c, t in zip(internal["codecs"], CODEC_ORDER):
        assert list(c) == ["type", "encoder", "decoder", "parameters"]
        assert [c["encoder"], c["decoder"]] == list(expected_internal(t))
        assert c["parameters"] == {}
    # Plain JSON data, and a fresh object each time.
    assert json.loads(json.dumps(doc)) == doc
    doc["engines"].clear()
    assert capability.to_json()["engines"]


@needs_gst
def test_real_select_element(gst_probe):
    assert select_element(Impl.INTERNAL, VType.VP8, "encoder") == "vp8enc"
    assert select_element(Impl.INTERNAL, VType.VP8, "decoder") == "vp8dec"
    expected = next((d for d in ("avdec_h265", "libde265dec") if gst_exists(d)), None)
    assert select_element(Impl.INTERNAL, VType.H265, "decoder") == expected
    assert select_element(Impl.CISCO_OPENH264, VType.H264, "encoder") is None
    with pytest.raises(ValueError):
        select_element(Impl.INTERNAL, VType.VP8, "muxer")


def test_engine_elements_table():
    assert engine_elements(Impl.INTERNAL, VType.VP8) == (("vp8enc",), ("vp8dec",))
    assert engine_elements(Impl.INTERNAL, VType.H264) == (("x264enc",), ("avdec_h264",))
    assert engine_elements(Impl.INTERNAL, VType.H265)[1] == ("avdec_h265", "libde265dec")
    assert engine_elements(Impl.INTERNAL, VType.AV1) == (("soraav1enc", "av1enc"), ("soradav1dec", "av1dec", "dav1ddec"))
    assert "nvh264enc" in engine_elements(Impl.NVIDIA_VIDEO_CODEC_SDK, VType.H264)[0]
    assert engine_elements(Impl.NVIDIA_VIDEO_CODEC_SDK, VType.VP9) == ((), ("nvvp9dec",))
    assert engine_elements(Impl.INTEL_VPL, VType.AV1) == (("qsvav1enc",), ("qsvav1dec",))
    assert engine_elements(Impl.CISCO_OPENH264, VType.H264) == ((), ())
    assert engine_elements(3, 4) == engine_elements(Impl.NVIDIA_VIDEO_CODEC_SDK, VType.H264)


# ---------------------------------------------------------------------------
# capability: logic with pretend probes
# ---------------------------------------------------------------------------


def test_official_like_capability_shape(monkeypatch):
    """A probe without H.264/H.265 elements reproduces the captured official output."""
    present = SOFTWARE - {"x264enc", "avdec_h264", "x265enc", "avdec_h265", "libde265dec"}
    fake_probe(monkeypatch, present)
    capability = get_video_codec_capability()
    captured = {
        "engines": [{
            "name": "internal",
            "codecs": [
                {"type": "VP8", "encoder": True, "decoder": True, "parameters": {}},
                {"type": "VP9", "encoder": True, "decoder": True, "parameters": {}},
                {"type": "H264", "encoder": False, "decoder": False, "parameters": {}},
                {"type": "H265", "encoder": False, "decoder": False, "parameters": {}},
                {"type": "AV1", "encoder": True, "decoder": True, "parameters": {}},
            ],
            "parameters": {},
        }]
    }  # fmt: skip
    assert capability.to_json() == captured
    assert json.dumps(capability.to_json()) == json.dumps(captured)
    preference = create_video_codec_preference_from_implementation(capability, Impl.INTERNAL)
    assert preference.to_json() == {
        "codecs": [
            {"type": "VP8", "encoder": "internal", "decoder": "internal", "parameters": {}},
            {"type": "VP9", "encoder": "internal", "decoder": "internal", "parameters": {}},
            {"type": "H264", "encoder": None, "decoder": None, "parameters": {}},
            {"type": "H265", "encoder": None, "decoder": None, "parameters": {}},
            {"type": "AV1", "encoder": "internal", "decoder": "internal", "parameters": {}},
        ]
    }
    reasons = capability.unavailable_reasons()
    assert "x264enc" in reasons["internal.H264"]
    assert "avdec_h264" in reasons["internal.H264"]
    assert "internal.VP8" not in reasons


def test_missing_payloader_makes_codec_unavailable(monkeypatch):
    fake_probe(monkeypatch, SOFTWARE - {"rtph265depay"})
    capability = get_video_codec_capability()
    h265 = [c for c in capability.engines[0].codecs if c.type == VType.H265][0]
    assert h265.encoder is True
    assert h265.decoder is False
    assert "rtph265depay" in capability.unavailable_reasons()["internal.H265"]


def test_alternative_decoder_counts(monkeypatch):
    fake_probe(monkeypatch, (SOFTWARE - {"avdec_h265", "av1dec", "soradav1dec"}) | {"dav1ddec"})
    capability = get_video_codec_capability()
    by_type = {c.type: c for c in capability.engines[0].codecs}
    assert by_type[VType.H265].decoder is True  # libde265dec
    assert by_type[VType.AV1].decoder is True  # dav1ddec


def test_engine_with_nothing_is_dropped(monkeypatch):
    fake_probe(monkeypatch, [])
    capability = get_video_codec_capability()
    assert capability.engines == []
    assert capability.to_json() == {"engines": []}
    reasons = capability.unavailable_reasons()
    assert "internal" in reasons
    assert not [k for k in reasons if k.startswith("internal.")]


def test_nvidia_engine_when_elements_registered(monkeypatch):
    fake_probe(monkeypatch, SOFTWARE | {"nvh264enc", "nvh264dec", "nvh265dec", "nvvp9dec"})
    capability = get_video_codec_capability()
    names = [e.name for e in capability.engines]
    assert names == [Impl.INTERNAL, Impl.NVIDIA_VIDEO_CODEC_SDK]
    nv = capability.engines[1]
    assert [c.type for c in nv.codecs] == CODEC_ORDER
    table = {c.type: (c.encoder, c.decoder) for c in nv.codecs}
    assert table == {
        VType.VP8: (False, False),
        VType.VP9: (False, True),
        VType.H264: (True, True),
        VType.H265: (False, True),
        VType.AV1: (False, False),
    }
    doc = capability.to_json()["engines"][1]
    assert doc["name"] == "nvidia_video_codec_sdk"
    assert set(doc["parameters"]) <= {"nvcodec_gpu_device_name"}
    reasons = capability.unavailable_reasons()
    assert "nvidia_video_codec_sdk" not in reasons
    assert "nvh265enc" in reasons["nvidia_video_codec_sdk.H265"]
    pref = create_video_codec_preference_from_implementation(
        capability, Impl.NVIDIA_VIDEO_CODEC_SDK
    )
    h264 = pref.codecs[pref.find(VType.H264)]
    assert (h264.encoder, h264.decoder) == (Impl.NVIDIA_VIDEO_CODEC_SDK,) * 2
    vp9 = pref.codecs[pref.find(VType.VP9)]
    assert (vp9.encoder, vp9.decoder) == (None, Impl.NVIDIA_VIDEO_CODEC_SDK)


def test_intel_engine_when_elements_registered(monkeypatch):
    fake_probe(monkeypatch, SOFTWARE | {"qsvh264enc", "qsvh264dec", "qsvav1enc"})
    capability = get_video_codec_capability()
    assert [e.name for e in capability.engines] == [Impl.INTERNAL, Impl.INTEL_VPL]
    vpl = capability.engines[1]
    table = {c.type: (c.encoder, c.decoder) for c in vpl.codecs}
    assert table[VType.H264] == (True, True)
    assert table[VType.AV1] == (True, False)
    assert table[VType.VP8] == (False, False)
    assert vpl.parameters.vpl_impl == "HARDWARE"
    assert capability.to_json()["engines"][1]["parameters"] == {"vpl_impl": "HARDWARE"}


def test_hardware_reasons_explain_missing_engines(monkeypatch):
    fake_probe(monkeypatch, SOFTWARE)
    reasons = get_video_codec_capability().unavailable_reasons()
    nv = reasons["nvidia_video_codec_sdk"]
    assert nv.startswith("nvcodec elements not registered: ")
    if not os.path.exists("/proc/driver/nvidia/version"):
        assert "no NVIDIA driver/GPU found" in nv
    assert reasons["intel_vpl"].startswith("qsv elements not registered: ")
    if not glob.glob("/dev/dri/renderD*"):
        assert "render node" in reasons["intel_vpl"]
    # unavailable_reasons() returns a copy.
    capability = get_video_codec_capability()
    capability.unavailable_reasons().clear()
    assert capability.unavailable_reasons()


def test_probe_defaults_to_engine_probe_module(monkeypatch):
    """With _probe = None the engine's sora_sdk._engine_probe is asked, lazily."""
    import types

    asked = []

    def element_available(name):
        asked.append(name)
        return name in SOFTWARE

    fake = types.ModuleType("sora_sdk._engine_probe")
    fake.element_available = element_available
    monkeypatch.setattr(codec_mod, "_probe", None)
    monkeypatch.setitem(sys.modules, "sora_sdk._engine_probe", fake)
    monkeypatch.setattr(sora_sdk, "_engine_probe", fake, raising=False)
    capability = get_video_codec_capability()
    assert "vp8enc" in asked
    assert capability.engines[0].name is Impl.INTERNAL
    # Each element is asked at most once per query.
    assert len(asked) == len(set(asked))


def test_probe_exceptions_propagate(monkeypatch):
    def broken(name):
        raise RuntimeError("registry unavailable")

    monkeypatch.setattr(codec_mod, "_probe", broken)
    with pytest.raises(RuntimeError, match="registry unavailable"):
        get_video_codec_capability()


def test_capability_classes_have_no_constructor(monkeypatch):
    for cls in (
        SoraVideoCodecCapability,
        SoraVideoCodecCapability.Engine,
        SoraVideoCodecCapability.Codec,
        SoraVideoCodecCapability.Parameters,
    ):
        with pytest.raises(TypeError, match="no constructor defined"):
            cls()
    fake_probe(monkeypatch, SOFTWARE)
    capability = get_video_codec_capability()
    engine = capability.engines[0]
    c = engine.codecs[0]
    for obj, attr, value in (
        (capability, "engines", []),
        (engine, "name", Impl.INTEL_VPL),
        (engine, "codecs", []),
        (c, "encoder", False),
        (c, "type", VType.AV1),
        (c.parameters, "version", "1"),
    ):
        with pytest.raises(AttributeError):
            setattr(obj, attr, value)
    # engines/codecs return new lists of the same objects.
    capability.engines.clear()
    assert len(capability.engines) == 1
    assert capability.engines[0] is engine
    params = engine.parameters
    for name in (
        "version", "openh264_path", "vpl_impl", "vpl_impl_value",
        "nvcodec_gpu_device_name", "amf_runtime_version", "amf_embedded_version",
    ):  # fmt: skip
        assert getattr(params, name) is None


# ---------------------------------------------------------------------------
# OpenH264 (Debian's libopenh264)
# ---------------------------------------------------------------------------


def openh264_version(path):
    class Version(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("major", "minor", "revision", "reserved")]

    lib = ctypes.CDLL(path)
    fn = lib.WelsGetCodecVersion
    fn.restype = Version
    fn.argtypes = []
    v = fn()
    return "%d.%d.%d" % (v.major, v.minor, v.revision)


@needs_openh264
@needs_gst
def test_openh264_engine_with_real_library(gst_probe):
    capability = get_video_codec_capability(openh264=OPENH264)
    names = [e.name for e in capability.engines]
    assert names[:2] == [Impl.INTERNAL, Impl.CISCO_OPENH264]
    engine = capability.engines[1]
    assert [c.type for c in engine.codecs] == [
        VType.VP8, VType.VP9, VType.H265, VType.AV1, VType.H264,
    ]  # fmt: skip
    h264 = engine.codecs[-1]
    assert h264.encoder is True and h264.decoder is True
    assert h264.parameters.openh264_path == OPENH264
    version = h264.parameters.version
    assert re.match(r"^\d+\.\d+\.\d+$", version)
    assert version == openh264_version(OPENH264)
    real = os.path.realpath(OPENH264)  # Debian: libopenh264.so.7 -> .so.2.3.1 (12), .so.8 -> .so.2.6.0 (13)
    m = re.search(r"\.so\.(\d+\.\d+\.\d+)$", real)
    if m:
        assert version == m.group(1)
    for c in engine.codecs[:-1]:
        assert (c.encoder, c.decoder) == (False, False)
    assert engine.parameters.openh264_path is None
    doc = capability.to_json()["engines"][1]
    assert doc == {
        "name": "cisco_openh264",
        "codecs": [
            {"type": "VP8", "encoder": False, "decoder": False, "parameters": {}},
            {"type": "VP9", "encoder": False, "decoder": False, "parameters": {}},
            {"type": "H265", "encoder": False, "decoder": False, "parameters": {}},
            {"type": "AV1", "encoder": False, "decoder": False, "parameters": {}},
            {"type": "H264", "encoder": True, "decoder": True,
             "parameters": {"version": version, "openh264_path": OPENH264}},
        ],
        "parameters": {},
    }  # fmt: skip
    assert list(doc["codecs"][-1]["parameters"]) == ["version", "openh264_path"]
    assert "cisco_openh264" not in capability.unavailable_reasons()

    preference = create_video_codec_preference_from_implementation(
        capability, Impl.CISCO_OPENH264
    )
    assert preference.has_implementation(Impl.CISCO_OPENH264)
    assert not preference.has_implementation(Impl.INTERNAL)
    index = preference.find(VType.H264)
    assert preference.codecs[index].encoder is Impl.CISCO_OPENH264
    assert validate_video_codec_preference(preference, capability) == []


@needs_openh264
def test_openh264_bare_soname_is_looked_up_like_dlopen(monkeypatch):
    fake_probe(monkeypatch, SOFTWARE)
    name = os.path.basename(OPENH264)
    capability = get_video_codec_capability(name)
    assert capability.engines[1].codecs[-1].parameters.openh264_path == name


def test_openh264_bad_paths_raise_value_error(monkeypatch, tmp_path):
    fake_probe(monkeypatch, SOFTWARE)
    missing = str(tmp_path / "nope" / "libopenh264.so")
    with pytest.raises(ValueError) as info:
        get_video_codec_capability(openh264=missing)
    assert missing in str(info.value)
    assert "does not exist" in str(info.value)

    not_a_library = tmp_path / "libopenh264.so"
    not_a_library.write_bytes(b"this is not an ELF file")
    with pytest.raises(ValueError) as info:
        get_video_codec_capability(str(not_a_library))
    assert str(not_a_library) in str(info.value)
    assert "could not be loaded" in str(info.value)

    with pytest.raises(ValueError, match="directory"):
        get_video_codec_capability(str(tmp_path))

    with pytest.raises(ValueError, match="libdoes-not-exist"):
        get_video_codec_capability("libdoes-not-exist.so.1")


def test_openh264_other_library_is_rejected(monkeypatch):
    fake_probe(monkeypatch, SOFTWARE)
    import ctypes.util

    other = None
    for candidate in glob.glob("/usr/lib/*-linux-gnu/libz.so.1") + glob.glob("/lib/*-linux-gnu/libz.so.1"):
        other = candidate
        break
    if other is None:
        found = ctypes.util.find_library("z")
        if found is None:
            pytest.skip("no libz to use as a non-OpenH264 library")
        other = found
    with pytest.raises(ValueError) as info:
        get_video_codec_capability(other)
    assert other in str(info.value)
    assert "not an OpenH264 library" in str(info.value)


def test_openh264_argument_types(monkeypatch):
    fake_probe(monkeypatch, SOFTWARE)
    with pytest.raises(TypeError):
        get_video_codec_capability(openh264=123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        get_video_codec_capability(openh264=b"/usr/lib/libopenh264.so")  # type: ignore[arg-type]
    # "" means no path, like None.
    names = [e.name for e in get_video_codec_capability("").engines]
    assert names == [Impl.INTERNAL]


# ---------------------------------------------------------------------------
# preference
# ---------------------------------------------------------------------------


def test_preference_defaults_and_to_json():
    pref = Pref()
    assert pref.codecs == []
    assert pref.to_json() == {"codecs": []}
    codec = Pref.Codec(VType.VP8, encoder=Impl.INTERNAL)
    assert codec.type is VType.VP8
    assert codec.encoder is Impl.INTERNAL
    assert codec.decoder is None
    assert isinstance(codec.parameters, Pref.Parameters)
    pref = Pref(codecs=[codec])
    doc = pref.to_json()
    assert doc == {
        "codecs": [{"type": "VP8", "encoder": "internal", "decoder": None, "parameters": {}}]
    }
    assert list(doc["codecs"][0]) == ["type", "encoder", "decoder", "parameters"]
    assert json.dumps(doc) == (
        '{"codecs": [{"type": "VP8", "encoder": "internal", "decoder": null, "parameters": {}}]}'
    )
    all_impls = Pref([Pref.Codec(VType.H264, i, i) for i in Impl])
    spelled = [c["encoder"] for c in all_impls.to_json()["codecs"]]
    assert spelled == [
        "internal", "cisco_openh264", "intel_vpl", "nvidia_video_codec_sdk",
        "amd_amf", "raspi_v4l2m2m",
    ]  # fmt: skip


def test_preference_codec_constructor_forms():
    # Codec(): libwebrtc's kVideoCodecGeneric, which has no enum member.
    generic = Pref.Codec()
    assert generic.encoder is None and generic.decoder is None
    with pytest.raises(ValueError):
        generic.type
    assert Pref([generic]).to_json()["codecs"][0]["type"] == "Generic"
    generic.type = VType.AV1
    assert generic.type is VType.AV1
    # Keyword form used by the official tests.
    c = Pref.Codec(
        type=VType.H264,
        decoder=Impl.CISCO_OPENH264,
        encoder=Impl.CISCO_OPENH264,
        parameters=Pref.Parameters(),
    )
    assert (c.type, c.encoder, c.decoder) == (VType.H264, Impl.CISCO_OPENH264, Impl.CISCO_OPENH264)
    # Plain ints convert, like nanobind's implicit enum conversion.
    c = Pref.Codec(4, 1, 0)
    assert c.type is VType.H264 and c.encoder is Impl.CISCO_OPENH264 and c.decoder is Impl.INTERNAL
    with pytest.raises(TypeError):
        Pref.Codec(encoder=Impl.INTERNAL)
    with pytest.raises(TypeError):
        Pref.Codec(99)
    with pytest.raises(TypeError):
        Pref.Codec("VP8")
    with pytest.raises(TypeError):
        Pref.Codec(VType.VP8, encoder="internal")
    with pytest.raises(TypeError):
        Pref.Codec(VType.VP8, parameters={})


def test_preference_codec_setters():
    c = Pref.Codec(VType.VP9)
    c.encoder = Impl.INTERNAL
    c.decoder = Impl.NVIDIA_VIDEO_CODEC_SDK
    assert (c.encoder, c.decoder) == (Impl.INTERNAL, Impl.NVIDIA_VIDEO_CODEC_SDK)
    c.encoder = None  # accepted since 2026.1.0
    c.decoder = None
    assert (c.encoder, c.decoder) == (None, None)
    c.type = 5
    assert c.type is VType.H265
    with pytest.raises(TypeError):
        c.type = None
    with pytest.raises(TypeError):
        c.encoder = "intel_vpl"
    params = Pref.Parameters()
    c.parameters = params
    assert isinstance(c.parameters, Pref.Parameters)
    with pytest.raises(TypeError):
        c.parameters = None


def test_preference_codecs_property_semantics():
    a = Pref.Codec(VType.VP8)
    pref = Pref([a])
    # Stored as a copy.
    a.encoder = Impl.INTERNAL
    assert pref.codecs[0].encoder is None
    # Items read back are the preference's own objects...
    pref.codecs[0].encoder = Impl.INTERNAL
    assert pref.to_json()["codecs"][0]["encoder"] == "internal"
    assert pref.codecs[0] is pref.codecs[0]
    # ...but the list is new each time.
    pref.codecs.append(Pref.Codec(VType.VP9))
    assert len(pref.codecs) == 1
    # Assignment copies too, and accepts any sequence.
    b = Pref.Codec(VType.AV1)
    pref.codecs = (b,)
    b.decoder = Impl.INTERNAL
    assert [c.type for c in pref.codecs] == [VType.AV1]
    assert pref.codecs[0].decoder is None
    with pytest.raises(TypeError):
        pref.codecs = [1, 2]
    with pytest.raises(TypeError):
        Pref(codecs="VP8")


def test_preference_find_get_or_add_has_implementation():
    pref = Pref([Pref.Codec(VType.VP8, Impl.INTERNAL, Impl.INTERNAL)])
    assert pref.find(VType.VP8) == 0
    assert pref.find(VType.H264) is None
    assert pref.find(1) == 0
    index = pref.get_or_add(VType.H264)
    assert index == 1
    assert pref.get_or_add(VType.H264) == 1
    assert pref.get_or_add(VType.VP8) == 0
    added = pref.codecs[index]
    assert (added.type, added.encoder, added.decoder) == (VType.H264, None, None)
    pref.codecs[index].encoder = Impl.CISCO_OPENH264
    assert pref.has_implementation(Impl.CISCO_OPENH264)
    assert pref.has_implementation(Impl.INTERNAL)
    assert not pref.has_implementation(Impl.NVIDIA_VIDEO_CODEC_SDK)
    assert pref.has_implementation(1)
    pref.codecs[index].decoder = Impl.INTEL_VPL
    assert pref.has_implementation(Impl.INTEL_VPL)
    with pytest.raises(TypeError):
        pref.find("VP8")
    with pytest.raises(TypeError):
        pref.has_implementation(None)


def test_preference_merge():
    base = Pref([
        Pref.Codec(VType.VP8, Impl.INTERNAL, Impl.INTERNAL),
        Pref.Codec(VType.H264, Impl.INTERNAL, Impl.INTERNAL),
        Pref.Codec(VType.AV1, Impl.INTERNAL, None),
    ])  # fmt: skip
    other = Pref([
        Pref.Codec(VType.H264, Impl.CISCO_OPENH264, None),  # only encoder replaced
        Pref.Codec(VType.AV1, None, None),  # nothing replaced
        Pref.Codec(VType.H265, None, Impl.NVIDIA_VIDEO_CODEC_SDK),  # appended
    ])  # fmt: skip
    base.merge(other)
    assert base.to_json() == {
        "codecs": [
            {"type": "VP8", "encoder": "internal", "decoder": "internal", "parameters": {}},
            {"type": "H264", "encoder": "cisco_openh264", "decoder": "internal", "parameters": {}},
            {"type": "AV1", "encoder": "internal", "decoder": None, "parameters": {}},
            {"type": "H265", "encoder": None, "decoder": "nvidia_video_codec_sdk", "parameters": {}},
        ]
    }  # fmt: skip
    # Appended codecs are copies.
    other.codecs[2].decoder = Impl.INTEL_VPL
    assert base.codecs[3].decoder is Impl.NVIDIA_VIDEO_CODEC_SDK
    # Merging into itself is harmless.
    before = base.to_json()
    base.merge(base)
    assert base.to_json() == before
    with pytest.raises(TypeError):
        base.merge({"codecs": []})


def test_create_preference_from_implementation_edge_cases(monkeypatch):
    fake_probe(monkeypatch, SOFTWARE)
    capability = get_video_codec_capability()
    empty = create_video_codec_preference_from_implementation(capability, Impl.AMD_AMF)
    assert empty.codecs == []
    internal = create_video_codec_preference_from_implementation(capability, 0)
    assert [c.type for c in internal.codecs] == CODEC_ORDER
    with pytest.raises(TypeError):
        create_video_codec_preference_from_implementation(None, Impl.INTERNAL)
    with pytest.raises(TypeError):
        create_video_codec_preference_from_implementation(capability, "internal")


def test_validate_preference(monkeypatch):
    present = SOFTWARE - {"x265enc"} | {"nvh264dec"}
    fake_probe(monkeypatch, present)
    capability = get_video_codec_capability()
    ok = create_video_codec_preference_from_implementation(capability, Impl.INTERNAL)
    assert validate_video_codec_preference(ok, capability) == []
    bad = Pref([
        Pref.Codec(VType.VP8, Impl.INTERNAL),
        Pref.Codec(VType.VP8, Impl.INTERNAL),
        Pref.Codec(VType.H265, Impl.INTERNAL),
        Pref.Codec(VType.H264, Impl.NVIDIA_VIDEO_CODEC_SDK),
        Pref.Codec(VType.AV1, None, Impl.INTEL_VPL),
    ])  # fmt: skip
    errors = validate_video_codec_preference(bad, capability)
    assert errors == [
        "duplicate VP8",
        'encoder not supported: codec_preference={"type":"H265","encoder":"internal",'
        '"decoder":null,"parameters":{}}, codec_capability={"type":"H265",'
        '"encoder":false,"decoder":true,"parameters":{}}',
        'encoder not supported: codec_preference={"type":"H264",'
        '"encoder":"nvidia_video_codec_sdk","decoder":null,"parameters":{}}, '
        'codec_capability={"type":"H264","encoder":false,"decoder":true,"parameters":{}}',
        'decoder implementation not found: codec_preference={"type":"AV1",'
        '"encoder":null,"decoder":"intel_vpl","parameters":{}}',
    ]


def test_missing_engine_probe_module_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(codec_mod, "_probe", None)
    monkeypatch.setitem(sys.modules, "sora_sdk._engine_probe", None)  # import fails
    with pytest.raises(RuntimeError, match="_engine_probe"):
        get_video_codec_capability()


def test_nvidia_reasons_and_gpu_name(monkeypatch, tmp_path):
    proc = tmp_path / "nvidia"
    monkeypatch.setattr(codec_mod, "_NVIDIA_PROC", str(proc))
    libs = set()
    monkeypatch.setattr(codec_mod, "_library_present", lambda name: name in libs)
    monkeypatch.setattr(codec_mod.sys, "platform", "linux")
    assert "no NVIDIA driver/GPU found" in codec_mod._nvidia_reason()
    assert codec_mod._nvidia_gpu_name() is None
    (proc / "gpus" / "0000:01:00.0").mkdir(parents=True)
    (proc / "version").write_text("NVRM version: 550.54\n")
    (proc / "gpus" / "0000:01:00.0" / "information").write_text(
        "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 42\n"
    )
    assert codec_mod._nvidia_gpu_name() == "NVIDIA H100 80GB HBM3"
    assert "libcuda.so.1" in codec_mod._nvidia_reason()
    libs.add("libcuda.so.1")
    assert "libnvidia-encode.so.1" in codec_mod._nvidia_reason()
    libs.update({"libnvidia-encode.so.1", "libnvcuvid.so.1"})
    assert "nvcodec plugin" in codec_mod._nvidia_reason()
    # The GPU name goes into the engine parameters when the engine is present.
    fake_probe(monkeypatch, SOFTWARE | {"nvh264enc", "nvh264dec"})
    capability = get_video_codec_capability()
    nv = capability.engines[1]
    assert nv.parameters.nvcodec_gpu_device_name == "NVIDIA H100 80GB HBM3"
    assert capability.to_json()["engines"][1]["parameters"] == {
        "nvcodec_gpu_device_name": "NVIDIA H100 80GB HBM3"
    }


def test_intel_reasons(monkeypatch, tmp_path):
    dri = tmp_path / "dri"
    dri.mkdir()
    monkeypatch.setattr(codec_mod, "_DRI_DIR", str(dri))
    libs = set()
    monkeypatch.setattr(codec_mod, "_library_present", lambda name: name in libs)
    monkeypatch.setattr(codec_mod.sys, "platform", "linux")
    assert "render node" in codec_mod._intel_reason()
    (dri / "renderD128").write_text("")
    assert "oneVPL" in codec_mod._intel_reason()
    libs.add("libmfx-gen.so.1.2")
    assert "qsv plugin" in codec_mod._intel_reason()


@needs_gst
def test_engine_probe_agrees_with_gstreamer_registry(monkeypatch):
    """The engine's own probe (sora_sdk._engine_probe, the default) reports what
    gst-inspect reports."""
    try:
        import sora_sdk._engine_probe as engine_probe
    except Exception as exc:  # engine shim not built here
        pytest.skip("sora_sdk._engine_probe unavailable: %s" % (exc,))
    for name in ("vp8enc", "av1dec", "x264enc", "rtph264pay", "nvh264enc", "qsvh264enc",
                 "sorartpav1pay", "sorartpav1depay", "no-such-element"):  # fmt: skip
        assert bool(engine_probe.element_available(name)) == gst_exists(name), name
    monkeypatch.setattr(codec_mod, "_probe", None)
    via_engine = get_video_codec_capability()
    monkeypatch.setattr(codec_mod, "_probe", gst_exists)
    via_gst = get_video_codec_capability()
    assert via_engine.to_json() == via_gst.to_json()
    assert via_engine.unavailable_reasons() == via_gst.unavailable_reasons()
