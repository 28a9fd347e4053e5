"""Loads the engine shim (libsora_c) and its cffi binding, in one place.

The shim is found at $SORA_SDK_LIBRARY if set, else next to this file. It is
loaded with RTLD_GLOBAL before the cffi module is imported, because the cffi
module is deliberately not linked against it (see build_ffi.py): whichever
shim is loaded first provides the symbols. A shim whose major ABI version
differs from the header this package was built with is refused.
"""
from __future__ import annotations

import ctypes
import logging
import os

from .errors import BY_CODE, SoraError

LIBRARY_ENV = "SORA_SDK_LIBRARY"
log = logging.getLogger("sora_sdk")


def library_path() -> str:
    """Path of the shim this process loads."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return override
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "libsora_c.so")


def _load():
    path = library_path()
    if not os.path.exists(path):
        raise ImportError(
            "sora_sdk engine shim not found at %s (run `make build`, or set %s to a built libsora_c.so)"
            % (path, LIBRARY_ENV)
        )
    try:
        shim = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    except OSError as exc:
        raise ImportError("cannot load the sora_sdk engine shim %s: %s" % (path, exc)) from exc
    try:
        from ._sora_cffi import ffi, lib
    except ImportError as exc:
        raise ImportError(
            "the shim %s does not provide the sora_c ABI this package needs: %s" % (path, exc)
        ) from exc
    version = lib.sora_c_abi_version()
    if version >> 16 != lib.SORA_C_ABI_MAJOR:
        raise ImportError(
            "the shim %s has ABI %d.%d, this package needs %d.x"
            % (path, version >> 16, version & 0xFFFF, lib.SORA_C_ABI_MAJOR)
        )
    if not os.environ.get("SORA_SDK_NO_WARM_UP"):
        # The engine, the DTLS certificate and the transport plugins, on a thread while the rest of the package
        # imports (~70 ms of work the first connect() would otherwise wait for).
        lib.sora_c_prepare()
    return shim, ffi, lib


_shim, ffi, lib = _load()

# Every C type the package names in a string (the type argument of ffi's new, cast, ...), parsed here once at import.
# PyPy's cffi parses such a string into one buffer shared by the whole process, with the GIL released, and caches
# the result under the string for good: two threads parsing two new strings at once can each get the other's type
# (seen: ffi.new("sora_peer_config *") answered with 'struct sora_peer *' while a client and the local server made
# peers at the same moment, and every later peer of that process failed). Parsed at import, the strings are only
# ever looked up afterwards. tests/test_ffi_types.py checks that this list names every string in the package.
C_TYPES = (
    "char **", "char[]", "int16_t *", "int32_t *", "uint8_t *", "const uint8_t *", "uint32_t *", "uint64_t *",
    "void *", "sora_audio_source **", "sora_callbacks *", "sora_codec_params *", "sora_context **",
    "sora_data_channel_init *", "sora_encoded_frame_info *", "sora_forward **", "sora_peer **",
    "sora_peer_config *", "sora_simulcast_encoding[]", "sora_sink **", "sora_sink_config *", "sora_transform **",
    "sora_video_source **",
)


def _plain(cname: str) -> str:
    return cname.replace("struct ", "").replace("const ", "").replace(" ", "")


def _parse_types() -> None:
    for name in C_TYPES:
        ctype = ffi.typeof(name)
        if _plain(ffi.getctype(ctype)) != _plain(name):
            raise ImportError("cffi parsed the C type %r as %r (another thread parsing at the same moment?)"
                              % (name, ffi.getctype(ctype)))


_parse_types()


def last_error() -> str:
    return ffi.string(lib.sora_c_last_error()).decode("utf-8", "replace")


def check(rc: int, what: str = "") -> int:
    """Turn a negative shim return code into the matching SoraError subclass."""
    if rc >= 0:
        return rc
    message = last_error() or "error %d" % rc
    if what:
        message = "%s: %s" % (what, message)
    raise BY_CODE.get(rc, SoraError)(message, rc)


def take_string(ptr) -> str:
    """Copy a shim-owned `char *` result into a Python str and free it."""
    if ptr == ffi.NULL:
        return ""
    try:
        return ffi.string(ptr).decode("utf-8", "replace")
    finally:
        lib.sora_c_free(ptr)


def cstr(value) -> object:
    """A borrowed C string for a call (None becomes NULL)."""
    if value is None:
        return ffi.NULL
    if isinstance(value, str):
        value = value.encode("utf-8")
    if b"\0" in value:
        raise ValueError("strings passed to the engine must not contain NUL characters")
    return value


def cbuf(value) -> object:
    """An owned `char[]` copy for a struct field (None becomes NULL); keep it alive while used."""
    b = cstr(value)
    return ffi.NULL if b == ffi.NULL else ffi.new("char[]", b)


# ---- event routing --------------------------------------------------------
# The shim calls these two functions on its dispatcher thread. `user_data` is
# a cffi handle to an EventRouter, kept alive in _routers until on_destroy.

_routers = {}


class EventRouter:
    """Connects one shim handle's callbacks to a Python object's methods.

    The router holds the target strongly: the shim may still deliver events
    until on_destroy, and the target must exist to receive them.
    """

    def __init__(self, on_event, on_destroy=None):
        self.on_event = on_event
        self.on_destroy = on_destroy
        self.handle = ffi.new_handle(self)
        self.callbacks = ffi.new("sora_callbacks *")
        self.callbacks.user_data = self.handle
        self.callbacks.on_event = lib._sora_on_event
        self.callbacks.on_destroy = lib._sora_on_destroy
        _routers[id(self)] = self


class Event:
    """A shim event copied into Python objects (valid after the callback).

    Frame events (video/audio) are not copied: `ptr`/`size` point at the
    frame and `ref` keeps it alive until `lib.sora_c_release(ref)`.
    """

    __slots__ = ("type", "i0", "i1", "i2", "str0", "str1", "str2", "data", "ptr", "size", "ref")

    def __init__(self, ev):
        self.type = ev.type
        self.i0 = ev.i0
        self.i1 = ev.i1
        self.i2 = ev.i2
        self.str0 = _opt_str(ev.str0)
        self.str1 = _opt_str(ev.str1)
        self.str2 = _opt_str(ev.str2)
        self.size = ev.size
        if ev.ref != ffi.NULL:
            self.ptr, self.ref, self.data = ev.data, ev.ref, b""
        else:
            self.ptr, self.ref = ffi.NULL, ffi.NULL
            self.data = ffi.buffer(ev.data, ev.size)[:] if ev.size else b""

    def __repr__(self):
        return "Event(type=%d, i0=%d, i1=%d, str0=%r, str1=%r, str2=%r, %d bytes)" % (
            self.type, self.i0, self.i1, self.str0, self.str1, self.str2, self.size)


def _opt_str(ptr):
    if ptr == ffi.NULL:
        return None
    return ffi.string(ptr).decode("utf-8", "replace")


def _on_callback_error(exc_type, exc_value, tb):
    log.error("uncaught error in an engine callback", exc_info=(exc_type, exc_value, tb))


@ffi.def_extern(onerror=_on_callback_error)
def _sora_on_event(user_data, event):
    router = ffi.from_handle(user_data)
    handler = router.on_event
    if handler is None:  # destroyed: a frame still owns its reference
        if event.ref != ffi.NULL:
            lib.sora_c_release(event.ref)
        return
    try:
        handler(Event(event))
    except Exception:
        log.exception("error while handling engine event %d", event.type)


@ffi.def_extern(onerror=_on_callback_error)
def _sora_on_destroy(user_data):
    router = ffi.from_handle(user_data)
    _routers.pop(id(router), None)
    if router.on_destroy is not None:
        try:
            router.on_destroy()
        except Exception:
            log.exception("error in an engine destroy callback")
    router.on_event = None
    router.on_destroy = None
