"""Engine element probe used by the codec capability query."""
from __future__ import annotations

from ._ffi import cstr, lib


def element_available(name: str) -> bool:
    """True if the engine can create the GStreamer element `name` (hardware elements need their driver)."""
    return bool(lib.sora_c_element_available(cstr(name)))
