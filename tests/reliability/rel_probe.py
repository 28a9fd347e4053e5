"""Probes of this process (memory, descriptors, threads, CPU) and the SDK error watch, for the reliability suite."""
from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent.parent


# --------------------------------------------------------------------------- process probes
try:
    _libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _libc = None


def rss_kb(trim: bool = True) -> int:
    """Resident set size of this process in KiB (after gc and malloc_trim, so freed memory is not counted)."""
    if trim:
        gc.collect()
        gc.collect()
        if _libc is not None and hasattr(_libc, "malloc_trim"):
            _libc.malloc_trim(0)
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_mallinfo2 = getattr(_libc, "mallinfo2", None) if _libc is not None else None  # glibc 2.33 and later
if _mallinfo2 is not None:
    _mallinfo2.restype = _MallInfo2
    _mallinfo2.argtypes = []


def heap_in_use_kb() -> int:
    """What malloc holds for live allocations (every arena plus mmapped blocks) in KiB; 0 where glibc cannot say.
    Unlike RSS it does not count freed memory the allocator keeps, so it moves only with what is really held."""
    if _mallinfo2 is None:
        return 0
    info = _mallinfo2()
    return (info.uordblks + info.hblkhd) // 1024


def floor_growth(values: List[float], window: int = 3) -> float:
    """Growth of the lowest of the last `window` values over the lowest of the first `window`. A leak lifts every
    sample; freed memory that glibc's arenas keep for a while (malloc_trim cannot give back a heap whose top is
    still in use) lifts only some, by up to ~10 MiB each, and the minimum sees past those."""
    window = max(1, min(window, len(values) // 2))
    first, last = min(values[:window]), min(values[-window:])
    return (last - first) / first


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_count() -> int:
    """Every thread of the process (Python and native: GStreamer, libnice, the dispatcher)."""
    return len(os.listdir("/proc/self/task"))


def task_names() -> List[str]:
    """The names (comm) of every thread of this process, sorted."""
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/comm" % tid) as handle:
                out.append(handle.read().strip())
        except OSError:
            pass
    return sorted(out)


def fd_targets() -> List[str]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink("/proc/self/fd/%s" % name))
        except OSError:
            pass
    return sorted(out)


def settle(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def cpu_seconds() -> float:
    """User + system CPU time of the whole process (every thread)."""
    times = os.times()
    return times.user + times.system


# --------------------------------------------------------------------------- SDK error watch
class ErrorWatch(logging.Handler):
    """Records what must never happen: an exception escaping SDK code.

    * ERROR records with a traceback on the ``sora_sdk`` logger (the dispatcher
      logs "error in work posted to the dispatcher thread" when a handler raised),
    * exceptions that end a Python thread (``threading.excepthook``).
    Exceptions raised by *user callbacks* are logged by the SDK too; tests that
    raise on purpose filter those with ``callback_errors()``.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: List[Tuple[str, str]] = []
        self._lock_ = threading.Lock()
        self._old_hook = None

    def emit(self, record: logging.LogRecord) -> None:
        detail = ""
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = "%s:%d" % (os.path.basename(tb.tb_frame.f_code.co_filename), tb.tb_lineno) if tb else "?"
            detail = "%s: %s at %s" % (type(exc).__name__, str(exc)[:200], where)
        with self._lock_:
            self.records.append((record.getMessage(), detail))

    def _thread_hook(self, args) -> None:
        name = args.thread.name if args.thread is not None else "?"
        with self._lock_:
            self.records.append(("exception in thread %s" % name,
                                 "%s: %s" % (args.exc_type.__name__, str(args.exc_value)[:200])))

    def start(self) -> "ErrorWatch":
        logging.getLogger("sora_sdk").addHandler(self)
        self._old_hook = threading.excepthook
        threading.excepthook = self._thread_hook
        return self

    def stop(self) -> None:
        logging.getLogger("sora_sdk").removeHandler(self)
        if self._old_hook is not None:
            threading.excepthook = self._old_hook

    def snapshot(self) -> int:
        with self._lock_:
            return len(self.records)

    def since(self, mark: int) -> List[Tuple[str, str]]:
        with self._lock_:
            return list(self.records[mark:])

    def sdk_errors(self, mark: int = 0) -> List[Tuple[str, str]]:
        """Errors that are not a user callback's exception (those the SDK reports on purpose)."""
        return [r for r in self.since(mark) if not r[0].startswith("exception raised in ")]

    def callback_errors(self, mark: int = 0) -> List[Tuple[str, str]]:
        return [r for r in self.since(mark) if r[0].startswith("exception raised in ")]


class ServerProcess:
    """`python -m sora_sdk.testing` in a child process (optionally inside a network namespace)."""

    def __init__(self, prefix: Optional[List[str]] = None, host: Optional[str] = None) -> None:
        cmd = list(prefix or []) + [sys.executable, "-m", "sora_sdk.testing", "--port", "0"]
        if host:
            cmd += ["--host", host, "--ice-address", host]
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("signaling_url="):
            self.close()
            raise RuntimeError("the local Sora server did not start: %r" % line)
        self.url = line.split("=", 1)[1]

    def rss_kb(self) -> int:
        try:
            with open("/proc/%d/status" % self.proc.pid) as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def task_count(self) -> int:
        """Threads of the server process (0 once it is gone)."""
        try:
            return len(os.listdir("/proc/%d/task" % self.proc.pid))
        except OSError:
            return 0

    def cpu_seconds(self) -> float:
        with open("/proc/%d/stat" % self.proc.pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class DemoSender:
    """The demo as a sender (`--role sendonly`: 640x480 VP8 at 30 fps and a tone) on `url`'s `channel`, in a process
    of its own, for `seconds`; close() ends it."""

    def __init__(self, url: str, channel: str, seconds: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "sora_sdk.demo", "--signaling-url", url, "--channel-id",
                                      channel, "--role", "sendonly", "--seconds", str(seconds)], cwd=str(ROOT),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_in_child(module: str, function: str, timeout: float) -> dict:
    """Run `module.function()` in a fresh interpreter (same venv, cwd = repository root) and return its dict.

    Memory and thread numbers of a process that already ran other tests say little (the allocator reuses
    what they freed), so the lifetime and load parts measure a process of their own.
    """
    import tempfile

    here = str(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory(prefix="sora-reliability-") as tmp:
        out = os.path.join(tmp, "result.json")
        code = ("import sys; sys.path[:0] = [%r, %r, %r]; import json, %s as m; "
                "json.dump(m.%s(), open(%r, 'w'))" % (str(ROOT), str(ROOT / "tests"), here, module, function, out))
        try:
            done = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError("%s.%s did not finish within %.0f s; its output ends with:\n%s" % (
                module, function, timeout, (exc.stderr or b"")[-3000:]))
        if done.returncode != 0 or not os.path.exists(out):
            lines = [l for l in done.stderr.splitlines() if "GStreamer-WARNING" not in l and l.strip()]
            raise AssertionError("%s.%s failed (exit %s):\n%s" % (module, function, done.returncode,
                                                                  "\n".join(lines[-40:])))
        with open(out) as handle:
            return json.load(handle)
