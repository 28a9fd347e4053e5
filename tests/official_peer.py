"""Driving the OFFICIAL Sora Python SDK (PyPI ``sora_sdk``) against our local server.

The official wheel is never imported by our package or by the test process:

* `official_python()` makes (once, then reuses) the git-ignored venv
  ``.venv-official`` with ``pip install sora_sdk==<OFFICIAL_VERSION> numpy``
  and returns its interpreter; tests skip, with the reason, only when that
  install is impossible (no registry, pip failure).
* libwebrtc gathers no ICE candidates on loopback, so the official client runs
  inside a network namespace that the tests create (`NetNS`: a veth pair,
  ``10.99.<n>.1/24`` in the root namespace <-> ``10.99.<n>.2/24`` inside). The
  local server listens and gathers ICE on the root-side address; nothing else
  is reachable from inside (no default route).
* `OfficialClient` runs ``tests/official_scripts/official_client.py`` with
  ``ip netns exec <ns> <venv python>``: commands go in as JSON lines on its
  stdin, events come back as JSON lines on its stdout.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "official_scripts"
CLIENT_SCRIPT = SCRIPTS / "official_client.py"
PROBE_SCRIPT = SCRIPTS / "official_probe.py"

OFFICIAL_VERSION = "2025.4.0"
VENV_DIR = Path(os.environ.get("SORA_OFFICIAL_VENV", str(ROOT / ".venv-official")))
STAMP = ".sora-official.stamp"
PIP_TIMEOUT = float(os.environ.get("SORA_OFFICIAL_PIP_TIMEOUT", "240"))


class OfficialUnavailable(Exception):
    """The official SDK cannot be installed here (the tests skip with this reason)."""


# --------------------------------------------------------------------------- the venv
def _is_usable_base(python: str) -> bool:
    try:
        out = subprocess.run(
            [python, "-c", "import sys, platform, venv, ensurepip; "
                           "print(platform.python_implementation(), sys.version_info[0], sys.version_info[1])"],
            capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    parts = out.stdout.split()
    return out.returncode == 0 and len(parts) == 3 and parts[0] == "CPython" and (int(parts[1]), int(parts[2])) >= (3, 11)


def _base_candidates() -> List[str]:
    """CPython >= 3.11 interpreters that can make the venv (the wheel needs cp311+)."""
    out: List[str] = []
    if sys.implementation.name == "cpython" and sys.version_info >= (3, 11):
        out.append(getattr(sys, "_base_executable", None) or sys.executable)
        out.append(sys.executable)
    out.append("/usr/bin/python3.11")
    for name in ("python3.11", "python3.12", "python3.13", "python3"):
        found = shutil.which(name)
        if found:
            out.append(found)
    seen, unique = set(), []
    for path in out:
        if path and path not in seen and os.path.exists(path):
            seen.add(path)
            unique.append(path)
    return unique


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _check_venv(venv: Path) -> Optional[str]:
    """The installed official version if the venv works, else None."""
    python = _venv_python(venv)
    if not python.exists() or not (venv / STAMP).exists():
        return None
    try:
        out = subprocess.run([str(python), str(PROBE_SCRIPT), "--version-only"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["version"]
    except (ValueError, KeyError, IndexError):
        return None


_venv_cache: Dict[str, Any] = {}


def official_python() -> str:
    """The interpreter of ``.venv-official`` (made on first use); OfficialUnavailable if it cannot be."""
    if "python" in _venv_cache:
        return _venv_cache["python"]
    if "error" in _venv_cache:
        raise OfficialUnavailable(_venv_cache["error"])
    try:
        python = _ensure_venv()
    except OfficialUnavailable as exc:
        _venv_cache["error"] = str(exc)
        raise
    _venv_cache["python"] = python
    return python


def _ensure_venv() -> str:
    VENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    # (outside the work tree: nothing to ignore there)
    lock_path = Path(tempfile.gettempdir()) / ("sora-official-venv-%08x.lock" % zlib.crc32(str(VENV_DIR).encode()))
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run (CPython and PyPy suites) waits here
        if _check_venv(VENV_DIR) == OFFICIAL_VERSION:
            return str(_venv_python(VENV_DIR))
        bases = [p for p in _base_candidates() if _is_usable_base(p)]
        if not bases:
            raise OfficialUnavailable("no CPython >= 3.11 with venv/ensurepip to make %s" % VENV_DIR)
        shutil.rmtree(VENV_DIR, ignore_errors=True)
        log: List[str] = []

        def run(cmd: List[str], timeout: float) -> subprocess.CompletedProcess:
            env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
                       PIP_ROOT_USER_ACTION="ignore")
            try:
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                raise OfficialUnavailable("%s timed out after %.0f s" % (" ".join(cmd[:4]), timeout))
            log.append("$ %s\n%s%s" % (" ".join(cmd), result.stdout[-2000:], result.stderr[-2000:]))
            return result

        made = False
        for base in bases:
            if run([base, "-m", "venv", str(VENV_DIR)], 180).returncode == 0 and _venv_python(VENV_DIR).exists():
                made = True
                break
            shutil.rmtree(VENV_DIR, ignore_errors=True)
        if not made:
            raise OfficialUnavailable("cannot create %s: %s" % (VENV_DIR, "\n".join(log)[-1500:]))
        pip = [str(_venv_python(VENV_DIR)), "-m", "pip", "install", "--progress-bar", "off",
               "sora_sdk==%s" % OFFICIAL_VERSION, "numpy"]
        result = run(pip, PIP_TIMEOUT)
        if result.returncode != 0:
            shutil.rmtree(VENV_DIR, ignore_errors=True)
            raise OfficialUnavailable("pip install sora_sdk==%s numpy failed (no registry access?): %s"
                                      % (OFFICIAL_VERSION, (result.stderr or result.stdout)[-1500:]))
        (VENV_DIR / STAMP).write_text(OFFICIAL_VERSION + "\n")
        version = _check_venv(VENV_DIR)
        if version != OFFICIAL_VERSION:
            # Installed but does not import: that is a real problem, not a missing registry.
            probe = subprocess.run([str(_venv_python(VENV_DIR)), str(PROBE_SCRIPT), "--version-only"],
                                   capture_output=True, text=True, timeout=60)
            raise RuntimeError("the official sora_sdk %s installed but does not load: %s%s"
                               % (OFFICIAL_VERSION, probe.stdout[-1000:], probe.stderr[-2000:]))
        return str(_venv_python(VENV_DIR))


# --------------------------------------------------------------------------- netns
def _ip(*args: str, check: bool = True, netns: Optional[str] = None) -> subprocess.CompletedProcess:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), result.stderr.strip()))
    return result


class NetNSUnavailable(Exception):
    pass


class NetNS:
    """A network namespace with one veth pair: `host_addr` (root side) <-> `peer_addr` (inside)."""

    def __init__(self, tag: str = "sorao") -> None:
        pid = os.getpid()
        self.name = "%s%d" % (tag, pid)
        self.host_if = "sv%da" % pid   # <= 15 characters for any pid
        self.peer_if = "sv%db" % pid
        self.subnet = self._free_subnet(pid)
        self.host_addr = "10.99.%d.1" % self.subnet
        self.peer_addr = "10.99.%d.2" % self.subnet
        self._created = False

    @staticmethod
    def _free_subnet(pid: int) -> int:
        try:
            used = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                                  timeout=10).stdout
            used += subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                                   timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetNSUnavailable("cannot run ip: %s" % exc)
        start = 100 + pid % 150
        for i in range(150):
            n = 100 + (start - 100 + i) % 150
            if ("10.99.%d." % n) not in used:
                return n
        raise NetNSUnavailable("no free 10.99.<n>.0/24 subnet")

    def create(self) -> "NetNS":
        if shutil.which("ip") is None:
            raise NetNSUnavailable("the ip command (iproute2) is missing")
        if os.geteuid() != 0:
            raise NetNSUnavailable("network namespaces need root")
        self.destroy()  # a stale one from a recycled pid
        self.sweep(self.name[: -len(str(os.getpid()))])
        try:
            _ip("netns", "add", self.name)
            self._created = True
            atexit.register(self.destroy)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
            _ip("link", "set", self.peer_if, "netns", self.name)
            # IPv4 only: no link-local IPv6 candidates on the pair.
            with contextlib.suppress(OSError):
                Path("/proc/sys/net/ipv6/conf/%s/disable_ipv6" % self.host_if).write_text("1")
            subprocess.run(["ip", "netns", "exec", self.name, "sh", "-c",
                            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"],
                           capture_output=True, timeout=20)
            _ip("addr", "add", self.host_addr + "/24", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("addr", "add", self.peer_addr + "/24", "dev", self.peer_if, netns=self.name)
            _ip("link", "set", self.peer_if, "up", netns=self.name)
            _ip("link", "set", "lo", "up", netns=self.name)
        except RuntimeError as exc:
            self.destroy()
            raise NetNSUnavailable(str(exc))
        self._wait_up()
        return self

    def _wait_up(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = _ip("-o", "link", "show", self.peer_if, check=False, netns=self.name).stdout
            if "LOWER_UP" in out:
                return
            time.sleep(0.05)

    @staticmethod
    def sweep(tag: str) -> None:
        """Remove namespaces (and veths) left by earlier runs of these tests whose process is gone."""
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
        for line in listing.splitlines():
            name = line.split(" ", 1)[0]
            if not name.startswith(tag) or not name[len(tag):].isdigit():
                continue
            pid = int(name[len(tag):])
            if pid == os.getpid() or os.path.exists("/proc/%d" % pid):
                continue
            subprocess.run(["ip", "link", "del", "sv%da" % pid], capture_output=True, timeout=20)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)
        self._created = False

    def exec_prefix(self) -> List[str]:
        return ["ip", "netns", "exec", self.name]


# --------------------------------------------------------------------------- the client process
class OfficialClient:
    """One official-SDK client process inside the namespace.

    ``config``: ``url``, ``connection`` (keyword arguments of ``create_connection``
    except the sources), ``send`` (``{"width","height","fps","colours","tone"}`` to
    create and feed a video + audio source) and ``recv`` (sinks for remote tracks).
    Events are dicts with ``event``; `wait()` finds them, `request()` sends a
    command and waits for its ``reply``.
    """

    def __init__(self, python: str, netns: NetNS, config: Dict[str, Any], *, max_seconds: float = 60.0,
                 name: str = "official") -> None:
        self.name = name
        self.config = dict(config, max_seconds=max_seconds)
        self.events: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        cmd = netns.exec_prefix() + [python, "-u", str(CLIENT_SCRIPT), json.dumps(self.config)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     start_new_session=True, cwd=str(SCRIPTS))
        self._reader = threading.Thread(target=self._read, name="official-reader", daemon=True)
        self._reader.start()
        self.returncode: Optional[int] = None

    # ---- events ----
    def _read(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "stdout", "text": line}
            event.setdefault("event", "unknown")
            event["_at"] = time.monotonic() - self.started
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "_eof", "_at": time.monotonic() - self.started})
            self._cond.notify_all()

    def of(self, name: str) -> List[Dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e["event"] == name]

    def wait(self, name: str, predicate: Optional[Callable[[Dict[str, Any]], bool]] = None,
             timeout: float = 15.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event["event"] == name and (predicate is None or predicate(event)):
                        return event
                if any(e["event"] == "_eof" for e in self.events):
                    raise AssertionError("%s exited before %r: %s" % (self.name, name, self.describe()))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: no %r in %.0f s: %s" % (self.name, name, timeout, self.describe()))
                self._cond.wait(min(left, 0.5))

    def request(self, cmd: str, timeout: float = 15.0, **fields: Any) -> Dict[str, Any]:
        with self._cond:
            self._seq += 1
            seq = self._seq
        self.send(dict(fields, cmd=cmd, id=seq))
        reply = self.wait("reply", lambda e: e.get("id") == seq, timeout)
        if reply.get("error"):
            raise AssertionError("%s: %s failed: %s" % (self.name, cmd, reply["error"]))
        return reply

    def send(self, message: Dict[str, Any]) -> None:
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise AssertionError("%s is gone (%s): %s" % (self.name, exc, self.describe()))

    # ---- conveniences ----
    def connected(self, timeout: float = 20.0) -> Dict[str, Any]:
        """The `connection.created` notify with the client's own connection_id."""
        return self.wait("connected", timeout=timeout)

    @property
    def connection_id(self) -> Optional[str]:
        offers = self.of("set_offer")
        return offers[0]["connection_id"] if offers else None

    def stderr_tail(self, size: int = 3000) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            end = self._stderr.tell()
            self._stderr.seek(max(0, end - size))
            return self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def describe(self) -> str:
        with self._cond:
            names = [e["event"] for e in self.events][-40:]
            errors = [e for e in self.events if e["event"] in ("error", "fatal")]
        return "events=%s errors=%s rc=%s stderr=...%s" % (names, errors, self.proc.poll(), self.stderr_tail(1500))

    # ---- the end ----
    def close(self, timeout: float = 20.0) -> int:
        """Ask the client to tear down in order and exit; kill it if it does not. Returns the exit status."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd":"exit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except (BrokenPipeError, ValueError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def __enter__(self) -> "OfficialClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def probe(python: str) -> Dict[str, Any]:
    """Versions of the official venv (sora_sdk, numpy, Python) as a dict."""
    out = subprocess.run([python, str(PROBE_SCRIPT)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError("official probe failed: %s %s" % (out.stdout[-500:], out.stderr[-1500:]))
    return json.loads(out.stdout.strip().splitlines()[-1])
