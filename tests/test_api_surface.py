"""Our public API against the official SDK's runtime dump (tests/data/runtime-api-2026.1.0.dev15.txt).

Every official class, method and property must exist here, except the ones
listed in NOT_YET (features tracked in open issues). The list must stay exact:
when one is implemented, this test fails until it is removed from NOT_YET.
"""
from __future__ import annotations

import inspect
import os
import re

import pytest

import sora_sdk

# The official wheel's runtime dump, captured by the team and kept in the repository (tests/data/README.md).
DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "runtime-api-2026.1.0.dev15.txt")

# Official names not provided yet (none: every official name exists).
NOT_YET: set = set()
# Leaked helpers of the official package (importlib.metadata), not API.
NOT_API = {"PackageNotFoundError", "version", "sora_sdk_ext"}


def _official():
    classes = {}
    current = None
    with open(DUMP, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"## class (\w+)", line)
            if m:
                current = classes.setdefault(m.group(1), set())
                continue
            m = re.match(r"  (?:member|property) (\w+) ", line)
            if m and current is not None and not m.group(1).startswith("_"):
                current.add(m.group(1))
    with open(DUMP, encoding="utf-8") as f:
        module_line = next(l for l in f if l.startswith("module members (sora_sdk):"))
    names = set(re.findall(r"'(\w+)'", module_line))
    return names, classes


NAMES, CLASSES = _official()


def test_every_official_module_name_exists_or_is_listed_as_not_yet():
    missing = {n for n in NAMES - NOT_API if not hasattr(sora_sdk, n)}
    assert missing == NOT_YET


@pytest.mark.parametrize("cls", sorted(set(CLASSES) - NOT_YET - NOT_API))
def test_official_class_has_every_member(cls):
    ours = getattr(sora_sdk, cls)
    missing = sorted(m for m in CLASSES[cls] if not hasattr(ours, m))
    assert missing == []


def test_create_connection_parameters_match_in_order():
    with open(DUMP, encoding="utf-8") as f:
        text = f.read()
    sig = re.search(r"def create_connection\(self, (.*?)\) -> SoraConnection", text).group(1)
    official = [p.split(":")[0].strip() for p in re.split(r", (?=\w+:)", sig)]
    ours = list(inspect.signature(sora_sdk.Sora.create_connection).parameters)[1:]
    assert ours == official


def test_connection_and_frames_have_no_public_constructor():
    for cls in (sora_sdk.SoraConnection, sora_sdk.SoraVideoFrame, sora_sdk.SoraAudioFrame, sora_sdk.SoraMediaTrack):
        with pytest.raises(TypeError):
            cls()


def test_stub_file_names_exist_at_runtime():
    stub = os.path.join(os.path.dirname(sora_sdk.__file__), "__init__.pyi")
    with open(stub, encoding="utf-8") as f:
        declared = set(re.findall(r"^class (\w+)", f.read(), re.M))
    assert sorted(n for n in declared if not hasattr(sora_sdk, n)) == []
