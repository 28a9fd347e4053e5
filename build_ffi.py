"""Build the cffi binding of the engine shim (sora_sdk/_sora_cffi.*.so).

Mode: out-of-line **API** mode. Two reasons: callbacks from the shim's
dispatcher thread use `extern "Python"` functions, which exist only in API
mode (no libffi closures, so no writable+executable memory, and faster on
PyPy); and the compiler checks our declarations against csrc/include/sora_c.h.

The module is *not* linked against libsora_c: its symbols are resolved when
the module is imported, from the shim that sora_sdk/_ffi.py has already
loaded with RTLD_GLOBAL. That is what lets SORA_SDK_LIBRARY drop in another
build of the shim by path.

Usage: python build_ffi.py   (builds in place for the running interpreter)
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "csrc", "include", "sora_c.h")


def cdef_from_header(path):
    """Turn the public header into cffi cdef text (declarations and integer #defines only)."""
    out = []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    skip = 0
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#if"):
            skip += 1
            continue
        if stripped.startswith("#endif"):
            skip -= 1
            continue
        if stripped.startswith(("#else", "#include", "#ifndef")):
            continue
        if stripped.startswith("#define"):
            m = re.match(r"#define\s+(SORA_\w+)\s+\(?(-?\d+)\)?\s*$", stripped)
            if m and skip <= 1:
                out.append("#define %s %s" % (m.group(1), m.group(2)))
            continue
        if skip > 1 or stripped.startswith('extern "C"') or stripped == "}":
            continue
        out.append(line.replace("SORA_C_API ", ""))
    return "\n".join(out)


CALLBACKS = """
extern "Python" void _sora_on_event(void *user_data, const sora_event *event);
extern "Python" void _sora_on_destroy(void *user_data);
"""

ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header(HEADER) + CALLBACKS)
ffibuilder.set_source(
    "sora_sdk._sora_cffi",
    '#include "sora_c.h"\n',
    include_dirs=[os.path.join(HERE, "csrc", "include")],
)

if __name__ == "__main__":
    os.chdir(HERE)
    ffibuilder.compile(verbose=False)
    for leftover in ("sora_sdk/_sora_cffi.c", "sora_sdk/_sora_cffi.o"):
        if os.path.exists(leftover):
            os.remove(leftover)
