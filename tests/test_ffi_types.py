"""The C type strings the package passes to cffi are all parsed once at import (sora_sdk._ffi.C_TYPES).

PyPy's cffi parses a type string into a process-wide buffer with the GIL released and caches what it got, so a
string parsed for the first time on two threads at once can be cached as the wrong type for good. The package
parses every string it uses at import, and checks each parsed type against its name there (a mismatch is an
ImportError); this test keeps the list complete.
"""
from __future__ import annotations

import re
from pathlib import Path

from sora_sdk._ffi import C_TYPES

PACKAGE = Path(__file__).resolve().parent.parent / "sora_sdk"
TYPE_STRING = re.compile(
    r"""ffi\.(?:new|cast|typeof|sizeof|alignof|offsetof|from_buffer|unpack|callback)\(\s*(["'])(.+?)\1""")


def strings_in_package() -> dict:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for match in TYPE_STRING.finditer(path.read_text(encoding="utf-8")):
            found.setdefault(match.group(2), path.relative_to(PACKAGE.parent).as_posix())
    return found


def test_every_c_type_string_in_the_package_is_parsed_at_import():
    found = strings_in_package()
    assert len(found) >= 20, found  # the scan itself finds the package's strings
    missing = {name: where for name, where in found.items() if name not in C_TYPES}
    assert not missing, "add these to sora_sdk._ffi.C_TYPES: %r" % missing

