"""pytest plugin of `make test-asan` (loaded with ``-p asan_plugin``): the tests must really run the ASan shim.

* At the start of the session: SORA_SDK_LIBRARY must name a shim built with
  AddressSanitizer, and after ``import sora_sdk`` this process must have that
  file and libasan mapped (/proc/self/maps); otherwise the session stops with
  an error (a run that silently loaded the normal build would prove nothing).
* At the end: every ASan report written by any process of the run (pytest
  itself or a child such as the local server, each writes
  ``$SORA_ASAN_LOG_DIR/asan.<pid>``) makes the run fail; the Makefile recipe
  prints them (also when halt_on_error ended pytest before its summary).
"""
from __future__ import annotations

import glob
import os

import pytest


def _mapped() -> list:
    paths = set()
    with open("/proc/self/maps") as handle:
        for line in handle:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                paths.add(parts[5].strip())
    return sorted(paths)


def _reports() -> list:
    directory = os.environ.get("SORA_ASAN_LOG_DIR")
    if not directory:
        return []
    return sorted(glob.glob(os.path.join(directory, "asan*")))


def pytest_sessionstart(session):
    wanted = os.environ.get("SORA_SDK_LIBRARY")
    if not wanted:
        raise pytest.UsageError("asan_plugin: SORA_SDK_LIBRARY is not set (run `make test-asan`)")
    import sora_sdk  # loads the shim
    from sora_sdk._ffi import library_path

    assert sora_sdk.Sora is not None
    maps = _mapped()
    real = os.path.realpath(wanted)
    if library_path() != wanted or real not in maps:
        raise pytest.UsageError("asan_plugin: %s is not the loaded shim (mapped: %s)" % (
            wanted, [p for p in maps if "sora" in p]))
    asan = [p for p in maps if "libasan" in os.path.basename(p)]
    if not asan:
        raise pytest.UsageError("asan_plugin: libasan is not mapped into this process (LD_PRELOAD?)")
    with open(real, "rb") as handle:
        if b"__asan_init" not in handle.read():
            raise pytest.UsageError("asan_plugin: %s is not built with -fsanitize=address" % real)
    session.config._asan_loaded = (real, asan[0])


def pytest_report_header(config):
    loaded = getattr(config, "_asan_loaded", None)
    if loaded:
        return "AddressSanitizer: shim %s, runtime %s (both mapped into this process)" % loaded
    return None


def pytest_sessionfinish(session, exitstatus):
    if _reports() and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    reports = _reports()
    terminalreporter.section("AddressSanitizer")
    if not reports:
        terminalreporter.write_line("no ASan report from any process of this run")
        return
    terminalreporter.write_line("%d ASan report(s), the run fails (`make test-asan` prints them): %s" % (
        len(reports), " ".join(reports)), red=True)
