"""Video codec capability / preference (API of the official ``sora_sdk``).

* :func:`get_video_codec_capability` reports which encoder/decoder each codec
  engine can *really* provide on this machine.  It does so by asking the media
  engine whether the GStreamer elements behind each implementation are
  registered (``sora_sdk._engine_probe.element_available(name) -> bool``,
  imported lazily) and, for Cisco's OpenH264, by loading the library the
  caller points at.
* :class:`SoraVideoCodecPreference` says which engine encodes/decodes each
  codec; :func:`create_video_codec_preference_from_implementation` builds one
  from a capability.

Both classes produce the same ``to_json()`` shapes as the official SDK (which
serialises the Sora C++ SDK structs through boost::json).

Additive API (not in the official SDK):

* :meth:`SoraVideoCodecCapability.unavailable_reasons` -- why an engine or a
  codec is missing, in words.
* :func:`engine_elements` / :func:`select_element` -- the GStreamer element
  names behind each (implementation, codec), for the engine that builds the
  pipelines, so probing and pipeline building use one table.
* :func:`validate_video_codec_preference` -- the checks the Sora C++ SDK runs
  on a preference against a capability, with the same error texts.

Test hook: set the module attribute ``_probe`` to a ``Callable[[str], bool]``
to replace the engine probe (``None``, the default, uses
``sora_sdk._engine_probe.element_available``).
"""

from __future__ import annotations

import ctypes
import glob
import importlib
import json
import os
import sys
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
)

from .enums import SoraVideoCodecImplementation, SoraVideoCodecType

__all__ = [
    "SoraVideoCodecCapability",
    "SoraVideoCodecPreference",
    "get_video_codec_capability",
    "create_video_codec_preference_from_implementation",
    "validate_video_codec_preference",
    "engine_elements",
    "select_element",
]

# Replaceable probe: Callable[[str], bool] or None (use sora_sdk._engine_probe).
_probe: Optional[Callable[[str], bool]] = None

_Impl = SoraVideoCodecImplementation
_Type = SoraVideoCodecType

# kVideoCodecGeneric: the type of a default-constructed preference Codec.
_GENERIC = 0

# to_json spellings (Sora C++ SDK tag_invoke for VideoCodecImplementation).
_IMPL_JSON = {
    _Impl.INTERNAL: "internal",
    _Impl.CISCO_OPENH264: "cisco_openh264",
    _Impl.INTEL_VPL: "intel_vpl",
    _Impl.NVIDIA_VIDEO_CODEC_SDK: "nvidia_video_codec_sdk",
    _Impl.AMD_AMF: "amd_amf",
    _Impl.RASPI_V4L2M2M: "raspi_v4l2m2m",
}

# to_json spellings of webrtc::VideoCodecType (CodecTypeToPayloadString).
_TYPE_JSON = {
    _GENERIC: "Generic",
    int(_Type.VP8): "VP8",
    int(_Type.VP9): "VP9",
    int(_Type.AV1): "AV1",
    int(_Type.H264): "H264",
    int(_Type.H265): "H265",
}

# Codec order of each engine in the official capability.
_STANDARD_ORDER = (_Type.VP8, _Type.VP9, _Type.H264, _Type.H265, _Type.AV1)
_OPENH264_ORDER = (_Type.VP8, _Type.VP9, _Type.H265, _Type.AV1, _Type.H264)

# GStreamer 1.22 elements behind each engine: codec -> (encoders, decoders),
# candidates in order of preference.  An empty tuple means "not provided".
_ELEMENTS: Dict[
    SoraVideoCodecImplementation,
    Dict[SoraVideoCodecType, Tuple[Tuple[str, ...], Tuple[str, ...]]],
] = {
    _Impl.INTERNAL: {
        _Type.VP8: (("vp8enc",), ("vp8dec",)),
        _Type.VP9: (("vp9enc",), ("vp9dec",)),
        _Type.H264: (("x264enc",), ("avdec_h264",)),
        _Type.H265: (("x265enc",), ("avdec_h265", "libde265dec")),
        # AV1 RTP (de)payloading: the shim's own sorartpav1pay/sorartpav1depay
        # (see _RTP_ELEMENTS); GStreamer 1.22 has no AV1 RTP elements. AV1
        # decoding: the shim's soradav1dec (dav1d), which decodebin prefers;
        # encoding: the shim's soraav1enc (libaom with libwebrtc's settings).
        _Type.AV1: (("soraav1enc", "av1enc"), ("soradav1dec", "av1dec", "dav1ddec")),
    },
    _Impl.INTEL_VPL: {
        _Type.VP8: ((), ()),
        _Type.VP9: (("qsvvp9enc",), ("qsvvp9dec",)),
        _Type.H264: (("qsvh264enc",), ("qsvh264dec",)),
        _Type.H265: (("qsvh265enc",), ("qsvh265dec",)),
        _Type.AV1: (("qsvav1enc",), ("qsvav1dec",)),
    },
    _Impl.NVIDIA_VIDEO_CODEC_SDK: {
        # NVENC has no VP8/VP9 encoder; GStreamer 1.22 has no nvav1enc (a
        # later GStreamer that has one is picked up automatically).
        _Type.VP8: ((), ("nvvp8dec",)),
        _Type.VP9: ((), ("nvvp9dec",)),
        _Type.H264: (("nvh264enc", "nvcudah264enc"), ("nvh264dec",)),
        _Type.H265: (("nvh265enc", "nvcudah265enc"), ("nvh265dec",)),
        _Type.AV1: (("nvav1enc",), ("nvav1dec",)),
    },
}

# RTP (de)payloaders each codec needs; None = nothing beyond the codec.
# The AV1 ones are not GStreamer plugins: the engine shim registers them when
# it starts (csrc/src/av1rtp.c), so only the engine probe sees them
# (``gst-inspect-1.0`` does not).
_RTP_ELEMENTS: Dict[SoraVideoCodecType, Optional[Tuple[str, str]]] = {
    _Type.VP8: ("rtpvp8pay", "rtpvp8depay"),
    _Type.VP9: ("rtpvp9pay", "rtpvp9depay"),
    _Type.H264: ("rtph264pay", "rtph264depay"),
    _Type.H265: ("rtph265pay", "rtph265depay"),
    _Type.AV1: ("sorartpav1pay", "sorartpav1depay"),
}


def _no_constructor(cls: type) -> TypeError:
    return TypeError("sora_sdk.%s: no constructor defined!" % cls.__qualname__)


def _coerce_enum(enum_cls: Any, value: Any, what: str) -> Any:
    """Accept an enum member, or an int naming one (nanobind's implicit
    conversion); anything else is a TypeError."""
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, int):
        try:
            return enum_cls(int(value))
        except ValueError:
            pass
    raise TypeError(
        "%s: expected %s, got %r" % (what, enum_cls.__name__, value)
    )


def _coerce_optional_enum(enum_cls: Any, value: Any, what: str) -> Any:
    if value is None:
        return None
    return _coerce_enum(enum_cls, value, what)


def _impl_json(impl: Optional[SoraVideoCodecImplementation]) -> Optional[str]:
    if impl is None:
        return None
    return _IMPL_JSON.get(impl, str(int(impl)))


def _type_json(codec_type: int) -> str:
    return _TYPE_JSON.get(int(codec_type), "Generic")


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------
# Capability
# ---------------------------------------------------------------------------


class SoraVideoCodecCapability:
    """Encoders/decoders available per engine (``get_video_codec_capability``).

    Read-only; there is no public constructor.
    """

    __slots__ = ("_engines", "_reasons", "__weakref__")
    _engines: List["SoraVideoCodecCapability.Engine"]
    _reasons: Dict[str, str]

    class Parameters:
        """Engine- or codec-specific details; every field may be ``None``."""

        __slots__ = (
            "_version",
            "_openh264_path",
            "_vpl_impl",
            "_vpl_impl_value",
            "_nvcodec_gpu_device_name",
            "_amf_runtime_version",
            "_amf_embedded_version",
        )
        _version: Optional[str]
        _openh264_path: Optional[str]
        _vpl_impl: Optional[str]
        _vpl_impl_value: Optional[int]
        _nvcodec_gpu_device_name: Optional[str]
        _amf_runtime_version: Optional[str]
        _amf_embedded_version: Optional[str]

        def __init__(self) -> None:
            raise _no_constructor(type(self))

        @classmethod
        def _make(cls, **fields: Any) -> "SoraVideoCodecCapability.Parameters":
            self = object.__new__(cls)
            for name in cls.__slots__:
                object.__setattr__(self, name, fields.pop(name[1:], None))
            if fields:
                raise TypeError("unknown parameters: %s" % sorted(fields))
            return self

        @property
        def version(self) -> Optional[str]:
            return self._version

        @property
        def openh264_path(self) -> Optional[str]:
            return self._openh264_path

        @property
        def vpl_impl(self) -> Optional[str]:
            return self._vpl_impl

        @property
        def vpl_impl_value(self) -> Optional[int]:
            return self._vpl_impl_value

        @property
        def nvcodec_gpu_device_name(self) -> Optional[str]:
            return self._nvcodec_gpu_device_name

        @property
        def amf_runtime_version(self) -> Optional[str]:
            return self._amf_runtime_version

        @property
        def amf_embedded_version(self) -> Optional[str]:
            return self._amf_embedded_version

        def _to_json(self) -> Dict[str, Any]:
            out: Dict[str, Any] = {}
            for name in SoraVideoCodecCapability.Parameters.__slots__:
                value = getattr(self, name)
                if value is not None:
                    out[name[1:]] = value
            return out

        def __repr__(self) -> str:
            return "SoraVideoCodecCapability.Parameters(%s)" % ", ".join(
                "%s=%r" % item for item in self._to_json().items()
            )

    class Codec:
        """Whether one engine can encode / decode one codec."""

        __slots__ = ("_type", "_encoder", "_decoder", "_parameters")
        _type: SoraVideoCodecType
        _encoder: bool
        _decoder: bool
        _parameters: "SoraVideoCodecCapability.Parameters"

        def __init__(self) -> None:
            raise _no_constructor(type(self))

        @classmethod
        def _make(
            cls,
            codec_type: SoraVideoCodecType,
            encoder: bool,
            decoder: bool,
            parameters: Optional["SoraVideoCodecCapability.Parameters"] = None,
        ) -> "SoraVideoCodecCapability.Codec":
            self = object.__new__(cls)
            self._type = codec_type
            self._encoder = bool(encoder)
            self._decoder = bool(decoder)
            self._parameters = (
                parameters
                if parameters is not None
                else SoraVideoCodecCapability.Parameters._make()
            )
            return self

        @property
        def type(self) -> SoraVideoCodecType:
            return self._type

        @property
        def encoder(self) -> bool:
            return self._encoder

        @property
        def decoder(self) -> bool:
            return self._decoder

        @property
        def parameters(self) -> "SoraVideoCodecCapability.Parameters":
            return self._parameters

        def _to_json(self) -> Dict[str, Any]:
            return {
                "type": _type_json(self._type),
                "encoder": self._encoder,
                "decoder": self._decoder,
                "parameters": self._parameters._to_json(),
            }

        def __repr__(self) -> str:
            return "SoraVideoCodecCapability.Codec(type=%s, encoder=%r, decoder=%r)" % (
                self._type,
                self._encoder,
                self._decoder,
            )

    class Engine:
        """One codec engine and the codecs it provides."""

        __slots__ = ("_name", "_codecs", "_parameters")
        _name: SoraVideoCodecImplementation
        _codecs: List["SoraVideoCodecCapability.Codec"]
        _parameters: "SoraVideoCodecCapability.Parameters"

        def __init__(self) -> None:
            raise _no_constructor(type(self))

        @classmethod
        def _make(
            cls,
            name: SoraVideoCodecImplementation,
            codecs: List["SoraVideoCodecCapability.Codec"],
            parameters: Optional["SoraVideoCodecCapability.Parameters"] = None,
        ) -> "SoraVideoCodecCapability.Engine":
            self = object.__new__(cls)
            self._name = name
            self._codecs = list(codecs)
            self._parameters = (
                parameters
                if parameters is not None
                else SoraVideoCodecCapability.Parameters._make()
            )
            return self

        @property
        def name(self) -> SoraVideoCodecImplementation:
            return self._name

        @property
        def codecs(self) -> List["SoraVideoCodecCapability.Codec"]:
            return list(self._codecs)

        @property
        def parameters(self) -> "SoraVideoCodecCapability.Parameters":
            return self._parameters

        def _to_json(self) -> Dict[str, Any]:
            return {
                "name": _impl_json(self._name),
                "codecs": [c._to_json() for c in self._codecs],
                "parameters": self._parameters._to_json(),
            }

        def __repr__(self) -> str:
            return "SoraVideoCodecCapability.Engine(name=%s, codecs=%r)" % (
                self._name,
                self._codecs,
            )

    def __init__(self) -> None:
        raise _no_constructor(type(self))

    @classmethod
    def _make(
        cls,
        engines: List["SoraVideoCodecCapability.Engine"],
        reasons: Optional[Dict[str, str]] = None,
    ) -> "SoraVideoCodecCapability":
        self = object.__new__(cls)
        self._engines = list(engines)
        self._reasons = dict(reasons or {})
        return self

    @property
    def engines(self) -> List["SoraVideoCodecCapability.Engine"]:
        return list(self._engines)

    def to_json(self) -> Any:
        """The capability as a JSON-compatible Python object (a dict)."""
        return {"engines": [e._to_json() for e in self._engines]}

    def unavailable_reasons(self) -> Dict[str, str]:
        """Why engines or codecs are missing (additive, not in the official SDK).

        Keys are implementation names as ``to_json`` spells them
        (``"nvidia_video_codec_sdk"``) for an engine that is absent from
        :attr:`engines`, and ``"<implementation>.<codec>"``
        (``"internal.H265"``) for a codec of a present engine whose encoder or
        decoder is unavailable.  Values are human-readable reasons.
        """
        return dict(self._reasons)

    def __repr__(self) -> str:
        return "SoraVideoCodecCapability(engines=%r)" % (self._engines,)


# ---------------------------------------------------------------------------
# Preference
# ---------------------------------------------------------------------------


class SoraVideoCodecPreference:
    """Which engine encodes / decodes each codec (passed to ``Sora()``).

    ``codecs`` behaves like the official nanobind property: reading it gives a
    new list whose items are the preference's own ``Codec`` objects (so
    ``pref.codecs[i].encoder = ...`` changes the preference, while
    ``pref.codecs.append(...)`` does not); assigning it, or passing codecs to
    the constructor, stores copies.
    """

    __slots__ = ("_codecs", "__weakref__")

    class Parameters:
        """Per-codec preference parameters (currently none)."""

        __slots__ = ()

        def __init__(self) -> None:
            pass

        def _clone(self) -> "SoraVideoCodecPreference.Parameters":
            return SoraVideoCodecPreference.Parameters()

        def _to_json(self) -> Dict[str, Any]:
            return {}

        def __repr__(self) -> str:
            return "SoraVideoCodecPreference.Parameters()"

    class Codec:
        """``Codec()`` or ``Codec(type, encoder=None, decoder=None, parameters=None)``."""

        __slots__ = ("_type", "_encoder", "_decoder", "_parameters")
        _type: int
        _encoder: Optional[SoraVideoCodecImplementation]
        _decoder: Optional[SoraVideoCodecImplementation]
        _parameters: "SoraVideoCodecPreference.Parameters"

        _MISSING: Any = object()

        def __init__(
            self,
            type: Any = _MISSING,
            encoder: Optional[SoraVideoCodecImplementation] = None,
            decoder: Optional[SoraVideoCodecImplementation] = None,
            parameters: Optional["SoraVideoCodecPreference.Parameters"] = None,
        ) -> None:
            if type is SoraVideoCodecPreference.Codec._MISSING:
                if encoder is not None or decoder is not None or parameters is not None:
                    raise TypeError(
                        "SoraVideoCodecPreference.Codec(): 'type' is required "
                        "when encoder, decoder or parameters are given"
                    )
                self._type = _GENERIC
            else:
                self._type = _coerce_enum(
                    SoraVideoCodecType, type, "SoraVideoCodecPreference.Codec.type"
                )
            self._encoder = _coerce_optional_enum(
                SoraVideoCodecImplementation,
                encoder,
                "SoraVideoCodecPreference.Codec.encoder",
            )
            self._decoder = _coerce_optional_enum(
                SoraVideoCodecImplementation,
                decoder,
                "SoraVideoCodecPreference.Codec.decoder",
            )
            self._parameters = _coerce_pref_parameters(parameters, allow_none=True)

        @property
        def type(self) -> SoraVideoCodecType:
            if self._type == _GENERIC:
                # What nanobind does for a C++ enum value without a member.
                raise ValueError("0 is not a valid SoraVideoCodecType.")
            return self._type  # type: ignore[return-value]

        @type.setter
        def type(self, value: SoraVideoCodecType) -> None:
            self._type = _coerce_enum(
                SoraVideoCodecType, value, "SoraVideoCodecPreference.Codec.type"
            )

        @property
        def encoder(self) -> Optional[SoraVideoCodecImplementation]:
            return self._encoder

        @encoder.setter
        def encoder(self, value: Optional[SoraVideoCodecImplementation]) -> None:
            self._encoder = _coerce_optional_enum(
                SoraVideoCodecImplementation,
                value,
                "SoraVideoCodecPreference.Codec.encoder",
            )

        @property
        def decoder(self) -> Optional[SoraVideoCodecImplementation]:
            return self._decoder

        @decoder.setter
        def decoder(self, value: Optional[SoraVideoCodecImplementation]) -> None:
            self._decoder = _coerce_optional_enum(
                SoraVideoCodecImplementation,
                value,
                "SoraVideoCodecPreference.Codec.decoder",
            )

        @property
        def parameters(self) -> "SoraVideoCodecPreference.Parameters":
            return self._parameters

        @parameters.setter
        def parameters(self, value: "SoraVideoCodecPreference.Parameters") -> None:
            self._parameters = _coerce_pref_parameters(value, allow_none=False)

        def _clone(self) -> "SoraVideoCodecPreference.Codec":
            other = object.__new__(SoraVideoCodecPreference.Codec)
            other._type = self._type
            other._encoder = self._encoder
            other._decoder = self._decoder
            other._parameters = self._parameters._clone()
            return other

        def _to_json(self) -> Dict[str, Any]:
            return {
                "type": _type_json(self._type),
                "encoder": _impl_json(self._encoder),
                "decoder": _impl_json(self._decoder),
                "parameters": self._parameters._to_json(),
            }

        def __repr__(self) -> str:
            type_text = "Generic" if self._type == _GENERIC else str(self._type)
            return "SoraVideoCodecPreference.Codec(type=%s, encoder=%s, decoder=%s)" % (
                type_text,
                self._encoder,
                self._decoder,
            )

    def __init__(self, codecs: Sequence["SoraVideoCodecPreference.Codec"] = ()) -> None:
        self._codecs: List[SoraVideoCodecPreference.Codec] = _copy_codec_list(codecs)

    @property
    def codecs(self) -> List["SoraVideoCodecPreference.Codec"]:
        return list(self._codecs)

    @codecs.setter
    def codecs(self, value: Sequence["SoraVideoCodecPreference.Codec"]) -> None:
        self._codecs = _copy_codec_list(value)

    def find(self, arg: SoraVideoCodecType, /) -> Optional[int]:
        """Index in :attr:`codecs` of the first entry for type ``arg``, else ``None``."""
        wanted = int(_coerce_enum(SoraVideoCodecType, arg, "find()"))
        for index, codec in enumerate(self._codecs):
            if codec._type == wanted:
                return index
        return None

    def get_or_add(self, arg: SoraVideoCodecType, /) -> int:
        """Index of the entry for type ``arg``, appending an empty one if missing."""
        codec_type = _coerce_enum(SoraVideoCodecType, arg, "get_or_add()")
        index = self.find(codec_type)
        if index is not None:
            return index
        self._codecs.append(SoraVideoCodecPreference.Codec(codec_type))
        return len(self._codecs) - 1

    def has_implementation(self, arg: SoraVideoCodecImplementation, /) -> bool:
        """True if any codec uses implementation ``arg`` as encoder or decoder."""
        impl = _coerce_enum(SoraVideoCodecImplementation, arg, "has_implementation()")
        return any(c._encoder == impl or c._decoder == impl for c in self._codecs)

    def merge(self, arg: "SoraVideoCodecPreference", /) -> None:
        """Merge preference ``arg`` into this one (Sora C++ SDK semantics).

        For a codec already present, a non-``None`` encoder/decoder of ``arg``
        replaces ours (and its parameters are taken when either is set);
        codecs not present yet are appended (as copies).
        """
        preference = arg
        if not isinstance(preference, SoraVideoCodecPreference):
            raise TypeError(
                "merge(): expected SoraVideoCodecPreference, got %r" % (preference,)
            )
        for codec in list(preference._codecs):
            index = None
            for i, mine in enumerate(self._codecs):
                if mine._type == codec._type:
                    index = i
                    break
            if index is None:
                self._codecs.append(codec._clone())
                continue
            mine = self._codecs[index]
            if codec._encoder is not None:
                mine._encoder = codec._encoder
            if codec._decoder is not None:
                mine._decoder = codec._decoder
            if codec._encoder is not None or codec._decoder is not None:
                mine._parameters = codec._parameters._clone()

    def to_json(self) -> Any:
        """The preference as a JSON-compatible Python object (a dict)."""
        return {"codecs": [c._to_json() for c in self._codecs]}

    def __repr__(self) -> str:
        return "SoraVideoCodecPreference(codecs=%r)" % (self._codecs,)


def _coerce_pref_parameters(
    value: Any, allow_none: bool
) -> SoraVideoCodecPreference.Parameters:
    if value is None and allow_none:
        return SoraVideoCodecPreference.Parameters()
    if isinstance(value, SoraVideoCodecPreference.Parameters):
        return value._clone()
    raise TypeError(
        "expected SoraVideoCodecPreference.Parameters, got %r" % (value,)
    )


def _copy_codec_list(codecs: Any) -> List[SoraVideoCodecPreference.Codec]:
    if isinstance(codecs, (str, bytes)) or not hasattr(codecs, "__iter__"):
        raise TypeError(
            "codecs: expected a sequence of SoraVideoCodecPreference.Codec, got %r"
            % (codecs,)
        )
    out = []
    for codec in codecs:
        if not isinstance(codec, SoraVideoCodecPreference.Codec):
            raise TypeError(
                "codecs: expected SoraVideoCodecPreference.Codec items, got %r"
                % (codec,)
            )
        out.append(codec._clone())
    return out


def create_video_codec_preference_from_implementation(
    arg0: SoraVideoCodecCapability,
    arg1: SoraVideoCodecImplementation,
    /,
) -> SoraVideoCodecPreference:
    """A preference that uses implementation ``arg1`` for every codec it provides.

    Every codec that engine lists in capability ``arg0`` is included;
    encoder/decoder are set where the engine provides them and ``None``
    otherwise.  An engine that is not in the capability gives an empty
    preference.
    """
    capability, implementation = arg0, arg1
    if not isinstance(capability, SoraVideoCodecCapability):
        raise TypeError(
            "create_video_codec_preference_from_implementation(): expected "
            "SoraVideoCodecCapability, got %r" % (capability,)
        )
    impl = _coerce_enum(
        SoraVideoCodecImplementation,
        implementation,
        "create_video_codec_preference_from_implementation()",
    )
    preference = SoraVideoCodecPreference()
    for engine in capability._engines:
        if engine._name != impl:
            continue
        for codec in engine._codecs:
            preference._codecs.append(
                SoraVideoCodecPreference.Codec(
                    codec._type,
                    impl if codec._encoder else None,
                    impl if codec._decoder else None,
                )
            )
        break
    return preference


def validate_video_codec_preference(
    preference: SoraVideoCodecPreference, capability: SoraVideoCodecCapability
) -> List[str]:
    """Errors of ``preference`` against ``capability`` (empty list: valid).

    Same checks and texts as the Sora C++ SDK's ValidateVideoCodecPreference:
    duplicate codec types, and encoders/decoders whose engine, codec or
    direction the capability lacks.
    """
    errors: List[str] = []
    for codec_type in (_Type.VP8, _Type.VP9, _Type.H264, _Type.H265, _Type.AV1):
        count = sum(1 for c in preference._codecs if c._type == codec_type)
        if count >= 2:
            errors.append("duplicate %s" % _type_json(codec_type))
    for codec in preference._codecs:
        for role in ("encoder", "decoder"):
            impl = codec._encoder if role == "encoder" else codec._decoder
            if impl is None:
                continue
            engine = None
            for e in capability._engines:
                if e._name == impl:
                    engine = e
                    break
            pref_json = _compact(codec._to_json())
            if engine is None:
                errors.append(
                    "%s implementation not found: codec_preference=%s"
                    % (role, pref_json)
                )
                break
            cap_codec = None
            for c in engine._codecs:
                if c._type == codec._type:
                    cap_codec = c
                    break
            if cap_codec is None:
                errors.append("codec type not found: codec_preference=%s" % pref_json)
                break
            supported = cap_codec._encoder if role == "encoder" else cap_codec._decoder
            if not supported:
                errors.append(
                    "%s not supported: codec_preference=%s, codec_capability=%s"
                    % (role, pref_json, _compact(cap_codec._to_json()))
                )
                break
    return errors


# ---------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------


def _resolve_probe() -> Callable[[str], bool]:
    probe = _probe
    if probe is not None:
        return probe
    try:
        engine_probe = importlib.import_module(__name__.rpartition(".")[0] + "._engine_probe")
    except ImportError as exc:
        raise RuntimeError(
            "sora_sdk: cannot probe video codecs: the media engine "
            "(sora_sdk._engine_probe) could not be loaded: %s" % (exc,)
        ) from exc
    element_available: Callable[[str], bool] = engine_probe.element_available
    return element_available


class _Prober:
    """Memoising wrapper around the element probe for one capability query."""

    def __init__(self, probe: Callable[[str], bool]) -> None:
        self._probe = probe
        self._cache: Dict[str, bool] = {}

    def has(self, name: str) -> bool:
        if name not in self._cache:
            self._cache[name] = bool(self._probe(name))
        return self._cache[name]

    def first(self, names: Iterable[str]) -> Optional[str]:
        for name in names:
            if self.has(name):
                return name
        return None


def engine_elements(
    implementation: SoraVideoCodecImplementation, codec_type: SoraVideoCodecType
) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """GStreamer element candidates ``(encoders, decoders)`` for an engine/codec.

    Candidates are in order of preference; an empty tuple means the engine
    does not provide that direction through GStreamer (Cisco OpenH264 is
    loaded from the user's library, not through an element, so it has none).
    """
    impl = _coerce_enum(SoraVideoCodecImplementation, implementation, "engine_elements()")
    ctype = _coerce_enum(SoraVideoCodecType, codec_type, "engine_elements()")
    return _ELEMENTS.get(impl, {}).get(ctype, ((), ()))


def select_element(
    implementation: SoraVideoCodecImplementation,
    codec_type: SoraVideoCodecType,
    role: str,
) -> Optional[str]:
    """The first registered element for ``role`` (``"encoder"``/``"decoder"``).

    Uses the same probe as :func:`get_video_codec_capability`; ``None`` when
    no candidate is registered.
    """
    if role not in ("encoder", "decoder"):
        raise ValueError("role must be 'encoder' or 'decoder', got %r" % (role,))
    encoders, decoders = engine_elements(implementation, codec_type)
    prober = _Prober(_resolve_probe())
    return prober.first(encoders if role == "encoder" else decoders)


def _probe_gst_engine(
    prober: _Prober,
    impl: SoraVideoCodecImplementation,
    reasons: Dict[str, str],
    parameters: Optional[SoraVideoCodecCapability.Parameters] = None,
) -> SoraVideoCodecCapability.Engine:
    table = _ELEMENTS[impl]
    codecs = []
    for codec_type in _STANDARD_ORDER:
        encoders, decoders = table[codec_type]
        encoder = prober.first(encoders)
        decoder = prober.first(decoders)
        problems = []
        if not encoders:
            problems.append("no encoder in this engine")
        elif encoder is None:
            problems.append("encoder element %s not found" % " / ".join(encoders))
        if not decoders:
            problems.append("no decoder in this engine")
        elif decoder is None:
            problems.append("decoder element %s not found" % " / ".join(decoders))
        rtp = _RTP_ELEMENTS[codec_type]
        if rtp is not None:
            pay, depay = rtp
            if encoder is not None and not prober.has(pay):
                problems.append("RTP payloader %s not found" % pay)
                encoder = None
            if decoder is not None and not prober.has(depay):
                problems.append("RTP depayloader %s not found" % depay)
                decoder = None
        codecs.append(
            SoraVideoCodecCapability.Codec._make(
                codec_type, encoder is not None, decoder is not None
            )
        )
        if problems and (encoder is None or decoder is None):
            reasons["%s.%s" % (_IMPL_JSON[impl], _type_json(codec_type))] = "; ".join(
                problems
            )
    return SoraVideoCodecCapability.Engine._make(impl, codecs, parameters)


# -- OpenH264 ----------------------------------------------------------------


class _OpenH264Version(ctypes.Structure):
    _fields_ = [
        ("uMajor", ctypes.c_uint32),
        ("uMinor", ctypes.c_uint32),
        ("uRevision", ctypes.c_uint32),
        ("uReserved", ctypes.c_uint32),
    ]


def _load_openh264(path: str) -> Optional[str]:
    """Load Cisco's OpenH264 from ``path``; return its version (or None).

    Raises ValueError naming the path when it cannot be used.
    """
    # A bare file name ("libopenh264.so.8") goes through the dynamic linker's
    # search path, as dlopen() does; anything with a directory must exist.
    bare_name = os.sep not in path and not os.path.exists(path)
    if not bare_name and not os.path.exists(path):
        raise ValueError("OpenH264 library not found: %r does not exist" % (path,))
    if os.path.isdir(path):
        raise ValueError("OpenH264 library path %r is a directory, not a library" % (path,))
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise ValueError(
            "OpenH264 library %r could not be loaded: %s" % (path, exc)
        ) from exc
    for symbol in ("WelsCreateSVCEncoder", "WelsCreateDecoder"):
        if not hasattr(lib, symbol):
            raise ValueError(
                "%r is not an OpenH264 library: it does not export %s" % (path, symbol)
            )
    version = _OpenH264Version()
    if hasattr(lib, "WelsGetCodecVersionEx"):
        func = lib.WelsGetCodecVersionEx
        func.restype = None
        func.argtypes = [ctypes.POINTER(_OpenH264Version)]
        func(ctypes.byref(version))
    elif hasattr(lib, "WelsGetCodecVersion"):
        func = lib.WelsGetCodecVersion
        func.restype = _OpenH264Version
        func.argtypes = []
        version = func()
    else:
        return None
    return "%d.%d.%d" % (version.uMajor, version.uMinor, version.uRevision)


def _mapped_openh264() -> List[str]:
    """Real paths of the OpenH264 libraries mapped into this process."""
    found = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(None, 5)[5].strip() if len(line.split(None, 5)) == 6 else ""
                if os.path.basename(path).startswith("libopenh264"):
                    found.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(found)


def bind_openh264(path: str) -> bool:
    """Make the engine's H.264 encoder (openh264enc) use the OpenH264 at ``path``; False if the engine has none.

    The library is loaded first, so the engine's OpenH264 plugin binds to it (same soname); raises
    ValueError when the engine ended up with another OpenH264 (another soname, or one loaded earlier).
    """
    _load_openh264(path)
    probe = _resolve_probe()
    if not probe("openh264enc"):
        return False
    wanted = _resolved_library(path)
    mapped = _mapped_openh264()
    others = [m for m in mapped if m != wanted]
    if wanted not in mapped or others:
        engine = sorted({_openh264_soname(m) for m in others}) or [_openh264_soname(system_openh264() or "")]
        raise ValueError("OpenH264 %r cannot be used for sending: the engine's OpenH264 encoder uses %s (it needs "
                         "a library with the soname %s, loaded before any other OpenH264)"
                         % (path, ", ".join(others) or "none", " or ".join(engine)))
    return True


def system_openh264() -> Optional[str]:
    """The path of the OpenH264 that the dynamic linker finds on this system, by its soname link
    (``libopenh264.so.<N>``: ``.so.7`` on Debian 12, ``.so.8`` on Debian 13, the highest when several), or None."""
    found = {}
    for directory in _library_dirs():
        for path in glob.glob(os.path.join(directory, "libopenh264.so.*")):
            major = path.rsplit(".so.", 1)[1]
            if major.isdigit() and os.path.isfile(path):
                found.setdefault(int(major), path)
    return found[max(found)] if found else None


def _openh264_soname(path: str) -> str:
    """The soname link (``libopenh264.so.<N>``) next to the OpenH264 library at ``path``; a generic name if none."""
    if path:
        real = os.path.realpath(path)
        for link in sorted(glob.glob(os.path.join(os.path.dirname(real), "libopenh264.so.*"))):
            if link.rsplit(".so.", 1)[1].isdigit() and os.path.realpath(link) == real:
                return os.path.basename(link)
    return "libopenh264.so.<N> of the engine's OpenH264 plugin"


def _resolved_library(path: str) -> str:
    if os.sep in path or os.path.exists(path):
        return os.path.realpath(path)
    for entry in _mapped_openh264():  # a bare soname: whatever the dynamic linker found
        if os.path.basename(entry).startswith(path.split(".so")[0]):
            return entry
    return path


def encoder_element_for(preference: Optional["SoraVideoCodecPreference"], openh264: Optional[str],
                        codec_name: str) -> Optional[str]:
    """The engine element that encodes ``codec_name`` for a ``Sora(openh264, video_codec_preference)``.

    None means the engine default (INTERNAL). A preference's encoder for the codec wins; without one,
    H.264 goes to OpenH264 when ``Sora(openh264=...)`` was given, as in the official SDK.
    """
    ctype = {"VP8": _Type.VP8, "VP9": _Type.VP9, "H264": _Type.H264, "H265": _Type.H265,
             "AV1": _Type.AV1}.get(codec_name.upper())
    if ctype is None:
        return None
    impl = None
    if preference is not None:
        for codec in preference.codecs:
            if codec.type == ctype:
                impl = codec.encoder
                break
    if impl is None and ctype == _Type.H264 and openh264:
        impl = _Impl.CISCO_OPENH264
    if impl is None or impl == _Impl.INTERNAL:
        return None
    if impl == _Impl.CISCO_OPENH264:
        return "openh264enc" if ctype == _Type.H264 and openh264 else None
    return select_element(impl, ctype, "encoder")


def _probe_openh264(
    prober: _Prober, path: str, reasons: Dict[str, str]
) -> SoraVideoCodecCapability.Engine:
    version = _load_openh264(path)
    pay, depay = _RTP_ELEMENTS[_Type.H264] or ("", "")
    encoder = prober.has(pay)
    decoder = prober.has(depay)
    codecs = []
    for codec_type in _OPENH264_ORDER:
        if codec_type == _Type.H264:
            params = SoraVideoCodecCapability.Parameters._make(
                version=version, openh264_path=path
            )
            codecs.append(
                SoraVideoCodecCapability.Codec._make(codec_type, encoder, decoder, params)
            )
        else:
            codecs.append(SoraVideoCodecCapability.Codec._make(codec_type, False, False))
    problems = []
    if not encoder:
        problems.append("RTP payloader %s not found" % pay)
    if not decoder:
        problems.append("RTP depayloader %s not found" % depay)
    if problems:
        reasons["cisco_openh264.H264"] = "; ".join(problems)
    return SoraVideoCodecCapability.Engine._make(_Impl.CISCO_OPENH264, codecs)


# -- host inspection for reasons / parameters --------------------------------

# Where the NVIDIA kernel driver reports itself, and where DRM render nodes
# live (module attributes so tests can point them elsewhere).
_NVIDIA_PROC = "/proc/driver/nvidia"
_DRI_DIR = "/dev/dri"


def _library_dirs() -> List[str]:
    dirs: List[str] = []
    for entry in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if entry:
            dirs.append(entry)
    for conf in glob.glob("/etc/ld.so.conf.d/*.conf"):
        try:
            with open(conf) as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith(("#", "include")):
                        dirs.append(line)
        except OSError:
            pass
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/lib64",
            "/usr/lib",
            "/lib",
            "/usr/local/lib",
            "/usr/local/cuda/lib64",
            "/usr/lib/wsl/lib",
        ]
    )
    return dirs


def _library_present(soname: str) -> bool:
    """Whether a shared library is installed (looked up without loading it)."""
    return any(os.path.exists(os.path.join(d, soname)) for d in _library_dirs())


def _nvidia_gpu_name() -> Optional[str]:
    for info in sorted(glob.glob(os.path.join(_NVIDIA_PROC, "gpus", "*", "information"))):
        try:
            with open(info) as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key.strip() == "Model" and value.strip():
                        return value.strip()
        except OSError:
            continue
    return None


def _nvidia_reason() -> str:
    prefix = "nvcodec elements not registered: "
    if not sys.platform.startswith("linux"):
        return prefix + "NVIDIA Video Codec SDK is only probed on Linux"
    version_file = os.path.join(_NVIDIA_PROC, "version")
    if not os.path.exists(version_file):
        return prefix + "no NVIDIA driver/GPU found (%s is missing)" % version_file
    if not _library_present("libcuda.so.1"):
        return prefix + "NVIDIA kernel driver found but libcuda.so.1 is not installed"
    missing = [
        lib
        for lib in ("libnvidia-encode.so.1", "libnvcuvid.so.1")
        if not _library_present(lib)
    ]
    if len(missing) == 2:
        return prefix + (
            "NVIDIA driver found but its NVENC/NVDEC libraries "
            "(libnvidia-encode.so.1, libnvcuvid.so.1) are not installed"
        )
    return prefix + (
        "the GStreamer nvcodec plugin (gstreamer1.0-plugins-bad) is missing or "
        "could not initialise CUDA/NVENC/NVDEC on this GPU"
    )


def _intel_reason() -> str:
    prefix = "qsv elements not registered: "
    if not sys.platform.startswith("linux"):
        return prefix + "Intel VPL is only probed on Linux"
    nodes = os.path.join(_DRI_DIR, "renderD*")
    if not glob.glob(nodes):
        return prefix + "no GPU render node (%s) found, so no Intel GPU" % nodes
    if not any(
        _library_present(lib)
        for lib in ("libmfx-gen.so.1.2", "libmfxhw64.so.1", "libvpl.so.2")
    ):
        return prefix + (
            "no Intel oneVPL/Media SDK runtime (libmfx-gen.so.1.2, libmfxhw64.so.1) "
            "is installed"
        )
    return prefix + (
        "the GStreamer qsv plugin (gstreamer1.0-plugins-bad) is missing or found "
        "no supported Intel GPU"
    )


# ---------------------------------------------------------------------------
# get_video_codec_capability
# ---------------------------------------------------------------------------


def get_video_codec_capability(openh264: Optional[str] = None) -> SoraVideoCodecCapability:
    """Probe the codec engines of this machine.

    * ``internal``: software codecs (libvpx VP8/VP9, libaom AV1, x264 +
      libav H.264, x265 + libav/libde265 H.265), as far as their GStreamer
      elements and RTP (de)payloaders are registered.
    * ``cisco_openh264``: only when ``openh264`` names an OpenH264 library;
      a path that does not exist or cannot be loaded raises ``ValueError``
      naming it (the official SDK silently drops the engine instead).  A
      bare file name (``"libopenh264.so.8"``) is looked up like dlopen()
      does; an empty string counts as "no path".
    * ``intel_vpl`` / ``nvidia_video_codec_sdk``: when GStreamer registered
      their (hardware) elements.

    Engines that provide nothing are left out, as in the official SDK; see
    :meth:`SoraVideoCodecCapability.unavailable_reasons` for why.
    """
    if openh264 is not None:
        given: Any = openh264
        if isinstance(given, os.PathLike):
            given = os.fspath(given)
        if not isinstance(given, str):
            raise TypeError(
                "get_video_codec_capability(): openh264 must be a str or None, got %r"
                % (openh264,)
            )
        openh264 = given or None

    prober = _Prober(_resolve_probe())
    reasons: Dict[str, str] = {}
    engines: List[SoraVideoCodecCapability.Engine] = []

    engines.append(_probe_gst_engine(prober, _Impl.INTERNAL, reasons))

    if openh264 is not None:
        engines.append(_probe_openh264(prober, openh264, reasons))
    else:
        reasons["cisco_openh264"] = (
            "no OpenH264 library path given (pass openh264='/path/to/libopenh264.so')"
        )

    vpl_params = SoraVideoCodecCapability.Parameters._make(vpl_impl="HARDWARE")
    engines.append(_probe_gst_engine(prober, _Impl.INTEL_VPL, reasons, vpl_params))

    nv_params = SoraVideoCodecCapability.Parameters._make(
        nvcodec_gpu_device_name=_nvidia_gpu_name()
    )
    engines.append(
        _probe_gst_engine(prober, _Impl.NVIDIA_VIDEO_CODEC_SDK, reasons, nv_params)
    )

    reasons["amd_amf"] = (
        "AMD AMF is not supported by this SDK on Linux (GStreamer's amfcodec "
        "elements are Windows-only)"
    )
    reasons["raspi_v4l2m2m"] = "Raspberry Pi V4L2 M2M is not supported by this SDK"

    kept = []
    for engine in engines:
        name = _IMPL_JSON[engine._name]
        if any(c._encoder or c._decoder for c in engine._codecs):
            kept.append(engine)
            continue
        # Whole engine missing: one reason for it instead of one per codec.
        for key in [k for k in reasons if k.startswith(name + ".")]:
            del reasons[key]
        if engine._name == _Impl.NVIDIA_VIDEO_CODEC_SDK:
            reasons[name] = _nvidia_reason()
        elif engine._name == _Impl.INTEL_VPL:
            reasons[name] = _intel_reason()
        else:
            reasons[name] = "none of its GStreamer elements are registered"
    return SoraVideoCodecCapability._make(kept, reasons)
