"""setuptools glue for ``pip install .``.

Metadata lives in pyproject.toml. This file adds the two native pieces:

* ``libsora_c.so``: the C shim, compiled from ``csrc/src/*.c`` with the same
  flags as ``make build`` (needs gcc, pkg-config and the GStreamer 1.22 -dev
  packages from vendor/debian-packages.txt) and shipped as package data;
* ``sora_sdk._sora_cffi``: the cffi API-mode module, via
  ``cffi_modules=["build_ffi.py:ffibuilder"]``.

Set SORA_SDK_SKIP_SHIM=1 to package an already built ``sora_sdk/libsora_c.so``
as is. ``make build`` is the in-place path that tests and CI use.
"""
import glob
import os
import platform
import shlex
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.join(HERE, "csrc", "src")
INC_DIR = os.path.join(HERE, "csrc", "include")
BUILD_DIR = os.path.join(HERE, "build", "setuptools-shim")
PKG_SHIM = os.path.join(HERE, "sora_sdk", "libsora_c.so")

# Keep in sync with the Makefile (PKG_MODULES, CFLAGS, LDLIBS).
PKG_MODULES = [
    "gstreamer-1.0", "gstreamer-webrtc-1.0", "gstreamer-sdp-1.0", "gstreamer-app-1.0",
    "gstreamer-video-1.0", "gstreamer-audio-1.0", "gstreamer-rtp-1.0", "gstreamer-pbutils-1.0",
    "nice", "libcrypto", "dav1d", "aom",
]
CFLAGS = ["-O2", "-g", "-fPIC", "-Wall", "-Wextra", "-std=gnu11", "-fvisibility=hidden",
          "-I" + INC_DIR, "-I" + SRC_DIR]
CXXFLAGS = ["-O2", "-g", "-fPIC", "-Wall", "-Wextra", "-std=gnu++17", "-fvisibility=hidden",
            "-I" + INC_DIR, "-I" + SRC_DIR]
LDLIBS = ["-lyuv", "-lz", "-ldl", "-lpthread", "-lm"]  # as the Makefile


def _run(cmd):
    print(" ".join(shlex.quote(c) for c in cmd))
    subprocess.check_call(cmd)


def _pkg_config(flag):
    try:
        out = subprocess.check_output(["pkg-config", flag] + PKG_MODULES)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            "sora_sdk: pkg-config could not find GStreamer 1.22 / libnice development files "
            "(%s). On Debian 12 install the packages in vendor/debian-packages.txt." % exc)
    return shlex.split(out.decode())


def build_shim():
    """Compile csrc/src/*.c(pp) into build/.../libsora_c.so and copy it to sora_sdk/."""
    if os.environ.get("SORA_SDK_SKIP_SHIM"):
        if not os.path.exists(PKG_SHIM):
            raise SystemExit("sora_sdk: SORA_SDK_SKIP_SHIM is set but %s does not exist" % PKG_SHIM)
        return PKG_SHIM
    c_srcs = sorted(glob.glob(os.path.join(SRC_DIR, "*.c")))
    cxx_srcs = sorted(glob.glob(os.path.join(SRC_DIR, "*.cpp")))
    if not c_srcs and not cxx_srcs:
        if os.path.exists(PKG_SHIM):  # e.g. building from an sdist without csrc/
            return PKG_SHIM
        raise SystemExit("sora_sdk: no C sources in %s" % SRC_DIR)
    cc = os.environ.get("CC", "gcc")
    cxx = os.environ.get("CXX", "g++")
    cflags = _pkg_config("--cflags")
    objs = []
    os.makedirs(BUILD_DIR, exist_ok=True)
    for src in c_srcs + cxx_srcs:
        is_cxx = src.endswith(".cpp")
        obj = os.path.join(BUILD_DIR, os.path.basename(src) + ".o")
        _run([cxx if is_cxx else cc] + (CXXFLAGS if is_cxx else CFLAGS) + cflags + ["-c", src, "-o", obj])
        objs.append(obj)
    out = os.path.join(BUILD_DIR, "libsora_c.so")
    _run([cxx if cxx_srcs else cc, "-shared", "-Wl,-soname,libsora_c.so", "-Wl,--no-undefined",
          "-o", out] + objs + _pkg_config("--libs") + LDLIBS)
    tmp = PKG_SHIM + ".tmp"
    shutil.copyfile(out, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, PKG_SHIM)
    return PKG_SHIM


class BuildPyWithShim(build_py):
    """Builds the shim before the package files (libsora_c.so is package data) are copied."""

    def run(self):
        build_shim()
        # A cffi module left in build/lib* by an older build would be packed beside the one build_ext makes.
        for stale in glob.glob(os.path.join(self.build_lib, "sora_sdk", "_sora_cffi*")):
            os.remove(stale)
        super().run()


# On CPython the cffi module uses only the stable ABI (cffi builds it as _sora_cffi.abi3.so), so the wheel is
# tagged cp39-abi3 and serves every CPython >= 3.9. PyPy's wheel keeps its own tag.
OPTIONS = {"bdist_wheel": {"py_limited_api": "cp39"}} if platform.python_implementation() == "CPython" else {}

setup(
    cmdclass={"build_py": BuildPyWithShim},
    cffi_modules=["build_ffi.py:ffibuilder"],
    options=OPTIONS,
)
