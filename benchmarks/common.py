"""What the benchmark scripts share: an SDK client that knows when it is connected, and CPU time."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process, from /proc/<pid>/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a child that still runs, SIGKILL it after `timeout` seconds, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


class Client:
    """One SDK connection; `start()` returns the seconds from connect() to its own connection.created."""

    def __init__(self, sora, url: str, **kwargs) -> None:
        self.conn = sora.create_connection(signaling_urls=[url], **kwargs)
        self.connection_id = None
        self.connected = threading.Event()
        self.messages = []
        self.channel_open = threading.Event()
        self.conn.on_set_offer = self._on_set_offer
        self.conn.on_notify = self._on_notify
        self.conn.on_data_channel = lambda label: self.channel_open.set()
        self.conn.on_message = lambda label, data: self.messages.append((time.perf_counter(), data))

    def _on_set_offer(self, text: str) -> None:
        self.connection_id = json.loads(text)["connection_id"]

    def _on_notify(self, text: str) -> None:
        message = json.loads(text)
        if message.get("event_type") == "connection.created" and message.get("connection_id") == self.connection_id:
            self.connected.set()

    def start(self, timeout: float = 15.0) -> float:
        begin = time.perf_counter()
        self.conn.connect()
        if not self.connected.wait(timeout):
            raise RuntimeError("not connected within %.0f s" % timeout)
        return time.perf_counter() - begin


class ServerProcess:
    """`python -m sora_sdk.testing` as a child process (its CPU apart from ours). `host`: listen and gather ICE on
    that address instead of loopback; `python`: the interpreter; `new_session`: keep it out of our signals."""

    def __init__(self, host: Optional[str] = None, python: Optional[str] = None, new_session: bool = False) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        args = [python or sys.executable, "-m", "sora_sdk.testing"]
        if host:
            args += ["--host", host, "--port", "0", "--ice-address", host]
        else:
            args += ["--port", "0"]
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=new_session)
        self.signaling_url = None
        deadline = time.monotonic() + 30
        while self.signaling_url is None and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("signaling_url="):
                self.signaling_url = line.strip().split("=", 1)[1]
        if self.signaling_url is None:
            self.close()
            raise RuntimeError("the local Sora server did not start")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def close(self) -> None:
        stop_process(self.proc, 15)
