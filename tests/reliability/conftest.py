"""The reliability suite (issue 5): fuzz, leaks/lifetime, faults and load.

Not part of the normal test run: the test files here are named ``check_*.py``,
which ``pytest tests/`` does not collect. They are collected when the run
targets this directory (``pytest tests/reliability``, which is what
``make test-reliability`` does) or names a file here explicitly.

Every part adds its measured numbers to the session's ``report``; when the
environment variable ``RELIABILITY_REPORT`` names a file (the Makefile sets
``benchmarks/RELIABILITY.md``), the numbers are written there at the end of the
session, and they are always printed in the terminal summary.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- collection
def _targets_this_directory(config) -> bool:
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collect_file(file_path, parent):
    """Collect check_*.py here, but only when the run asked for this directory."""
    if file_path.suffix != ".py" or not file_path.name.startswith("check_") or file_path.parent != HERE:
        return None
    if parent.session.isinitpath(file_path):
        return None  # named explicitly: the python plugin collects it already
    if not _targets_this_directory(parent.config):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


from rel_probe import ErrorWatch  # noqa: E402


@pytest.fixture
def error_watch():
    watch = ErrorWatch().start()
    try:
        yield watch
    finally:
        watch.stop()


# --------------------------------------------------------------------------- report
class Report:
    """Numbers measured by the parts of the suite, written to RELIABILITY_REPORT at the end."""

    def __init__(self) -> None:
        self.sections: Dict[str, List[Tuple[str, str]]] = {}
        self.notes: Dict[str, List[str]] = {}
        self.durations: Dict[str, float] = {}
        self.started = time.time()

    def add(self, section: str, name: str, value: Any) -> None:
        self.sections.setdefault(section, []).append((name, str(value)))

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def render(self) -> str:
        impl = platform.python_implementation()
        lines = ["# Reliability suite results", "",
                 "Written by `make test-reliability%s` (tests/reliability/) on %s; %s %s, %d CPU cores." % (
                     " PY=pypy3" if impl == "PyPy" else "", time.strftime("%Y-%m-%d %H:%M", time.localtime()),
                     impl, platform.python_version(), os.cpu_count() or 0),
                 "Loopback only; the real engine (GStreamer webrtcbin) and the local Sora server, no mocks.",
                 "The shim under AddressSanitizer (`make test-asan`) is recorded in benchmarks/ASAN.md.", ""]
        order = ["fuzz", "lifetime", "faults", "load"]
        for section in sorted(self.sections, key=lambda s: (order.index(s) if s in order else 99, s)):
            lines.append("## %s" % section)
            lines.append("")
            lines.append("| measure | value |")
            lines.append("|---|---|")
            for name, value in self.sections[section]:
                lines.append("| %s | %s |" % (name.replace("|", "/"), value.replace("|", "/")))
            lines.append("")
            for text in self.notes.get(section, []):
                lines.append("* " + text)
            if self.notes.get(section):
                lines.append("")
        if self.durations:
            lines.append("## durations")
            lines.append("")
            lines.append("| test | seconds | outcome |")
            lines.append("|---|---|---|")
            for name, (seconds, outcome) in self.durations.items():
                lines.append("| %s | %.1f | %s |" % (name, seconds, outcome))
            lines.append("")
            lines.append("Total %.0f s." % sum(s for s, _ in self.durations.values()))
            lines.append("")
        return "\n".join(lines)


_REPORT: Optional[Report] = None


@pytest.fixture(scope="session")
def report():
    global _REPORT
    if _REPORT is None:
        _REPORT = Report()
    return _REPORT


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if _REPORT is None or call.when != "call" or item.path.parent != HERE:
        return
    result = outcome.get_result()
    state = "xfailed" if getattr(result, "wasxfail", None) is not None and result.skipped else result.outcome
    _REPORT.durations[item.nodeid.split("/")[-1]] = (call.duration, state)


def pytest_sessionfinish(session, exitstatus):
    if _REPORT is None or not _REPORT.sections:
        return
    target = os.environ.get("RELIABILITY_REPORT")
    if target:
        path = Path(target)
        if not path.is_absolute():
            path = Path(session.config.invocation_params.dir) / path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_REPORT.render())


def pytest_terminal_summary(terminalreporter):
    if _REPORT is None or not _REPORT.sections:
        return
    terminalreporter.section("reliability numbers")
    for line in _REPORT.render().splitlines():
        terminalreporter.write_line(line)
    target = os.environ.get("RELIABILITY_REPORT")
    if target:
        terminalreporter.write_line("(written to %s)" % target)
