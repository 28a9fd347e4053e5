"""The C type strings the package passes to cffi are all parsed once at import (sora_sdk._ffi.C_TYPES).

PyPy's cffi parses a type string into a process-wide buffer with the GIL released and caches what it got, so a
string parsed for the first time on two threads at once can be cached as the wrong type for good. The package
parses every string it uses at import; these tests keep that list complete and correct.
"""
from __future__ import annotations

import re
from pathlib import Path

from sora_sdk._ffi import C_TYPES, ffi

PACKAGE = Path(__file__).resolve().parent.parent / "sora_sdk"
TYPE_STRING = re.compile(r'ffi\.(?:new|cast|typeof|sizeof|alignof|offsetof|from_buffer|unpack|callback)\(\s*"([^"]+)"')


def strings_in_package() -> dict:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for match in TYPE_STRING.finditer(path.read_text(encoding="utf-8")):
            found.setdefault(match.group(1), path.relative_to(PACKAGE.parent).as_posix())
    return found


def test_every_c_type_string_in_the_package_is_parsed_at_import():
    found = strings_in_package()
    assert len(found) >= 20, found  # the scan itself finds the package's strings
    missing = {name: where for name, where in found.items() if name not in C_TYPES}
    assert not missing, "add these to sora_sdk._ffi.C_TYPES: %r" % missing


def test_the_parsed_types_are_the_ones_named():
    def plain(cname: str) -> str:  # cffi writes 'struct sora_peer * *' for 'sora_peer **', drops const
        return cname.replace("struct ", "").replace("const ", "").replace(" ", "")

    wrong = [(name, ffi.getctype(ffi.typeof(name))) for name in C_TYPES
             if plain(ffi.getctype(ffi.typeof(name))) != plain(name)]
    assert not wrong, wrong
