"""The header itself: every SORA_C_API function is documented, exported by the library and bound by cffi."""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import pytest

from .conftest import HEADER, lib, library_path

_DECL = re.compile(r"^SORA_C_API\s+[\w\s\*]*?\b(\w+)\s*\(")


def _header_lines():
    with open(HEADER, encoding="utf-8") as f:
        return f.read().splitlines()


def _declarations():
    """[(function name, line number, the line directly above)] of every SORA_C_API declaration."""
    lines = _header_lines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith("#"):
            continue
        m = _DECL.match(line)
        if m:
            out.append((m.group(1), i + 1, lines[i - 1] if i else ""))
        else:
            assert not line.lstrip().startswith("SORA_C_API"), "unparsed declaration at line %d: %r" % (i + 1, line)
    return out


FUNCTIONS = [name for name, _, _ in _declarations()]


def _defines():
    out = {}
    for line in _header_lines():
        m = re.match(r"#define\s+(SORA_\w+)\s+\(?(-?\d+)\)?\s*(/\*.*)?$", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def test_header_declares_the_api():
    assert len(FUNCTIONS) >= 30, FUNCTIONS
    assert len(FUNCTIONS) == len(set(FUNCTIONS)), "a function is declared twice"
    assert all(name.startswith("sora_") for name in FUNCTIONS), FUNCTIONS


@pytest.mark.parametrize("name,line,above", _declarations(), ids=FUNCTIONS)
def test_function_has_a_one_line_comment_directly_above(name, line, above):
    text = above.strip()
    assert text.startswith("/*") and text.endswith("*/") and len(text) > 4, \
        "%s (sora_c.h:%d) is not preceded by a one-line /* ... */ comment (line above: %r)" % (name, line, above)
    assert text[2:-2].strip(), "%s (sora_c.h:%d) has an empty comment" % (name, line)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_is_exported_by_the_library(name):
    shim = ctypes.CDLL(library_path())
    try:
        getattr(shim, name)
    except AttributeError:
        pytest.fail("%s is declared in sora_c.h but not exported by %s" % (name, library_path()))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_is_bound_by_cffi(name):
    assert hasattr(lib, name), "the cffi binding lacks %s: rebuild it (python build_ffi.py)" % name


def _dynamic_symbols():
    nm = shutil.which("nm")
    if not nm:
        pytest.skip("nm is not installed")
    out = subprocess.run([nm, "-D", "--defined-only", library_path()], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=30)
    if out.returncode != 0:
        pytest.skip("nm -D failed: %s" % out.stderr.decode("utf-8", "replace").strip())
    symbols = {}
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            symbols[parts[2].split("@")[0]] = parts[1]
    return symbols


def test_nm_lists_every_function_as_code():
    symbols = _dynamic_symbols()
    missing = [name for name in FUNCTIONS if symbols.get(name) not in ("T", "t", "W", "i")]
    assert not missing, "not exported as functions (nm -D): %r" % missing


def test_no_undocumented_sora_exports():
    """Internal helpers stay hidden (-fvisibility=hidden): every exported sora_* symbol is in the header."""
    symbols = _dynamic_symbols()
    extra = sorted(s for s in symbols if s.startswith("sora_") and s not in FUNCTIONS)
    assert not extra, "exported but not declared in sora_c.h: %r" % extra


@pytest.mark.parametrize("name,value", sorted(_defines().items()))
def test_binding_constants_match_the_header(name, value):
    assert getattr(lib, name) == value, "lib.%s is %r, sora_c.h says %r (stale cffi build?)" % (
        name, getattr(lib, name), value)


def test_header_and_library_abi_major_agree():
    defines = _defines()
    assert lib.sora_c_abi_version() >> 16 == defines["SORA_C_ABI_MAJOR"]
