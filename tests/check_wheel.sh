#!/usr/bin/env bash
# Checks the wheels that `make wheel` builds (issue 13).
#
#   tests/check_wheel.sh --contents WHEEL...
#       each wheel holds exactly one shim (sora_sdk/libsora_c.so) and one cffi module, the one of its
#       interpreter: _sora_cffi.abi3.so in a cp*-abi3 wheel, _sora_cffi.pypy*.so in a PyPy wheel.
#
#   tests/check_wheel.sh [--python PYTHON] [--seconds N] WHEEL
#       installs WHEEL (and numpy / cffi from PyPI or pip's cache) into a fresh venv in a temporary directory
#       outside the tree, then, from there, imports sora_sdk and runs the round-trip demo (a sender and a
#       receiver through the embedded local server) with a PATH without compilers. Then every shared object
#       the demo's process had mapped must come from the venv or from a Debian package that
#       vendor/runtime-packages.txt installs (the packages named there and their dependencies): no -dev
#       package, no compiler, no Python headers. PYTHON (default python3) makes the venv; its own Debian package
#       (python3.11, pypy3) counts as installed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

contents() {
    local wheel names shims modules bad=0
    for wheel in "$@"; do
        names=$(python3 -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$wheel")
        shims=$(grep -c '^sora_sdk/libsora_c\.so$' <<<"$names" || true)
        modules=$(grep '^sora_sdk/_sora_cffi.*\.so$' <<<"$names" || true)
        others=$(grep '\.so$' <<<"$names" | grep -v '^sora_sdk/libsora_c\.so$' | grep -v '^sora_sdk/_sora_cffi' || true)
        case "$(basename "$wheel")" in
            *-abi3-*) want='^sora_sdk/_sora_cffi\.abi3\.so$' ;;
            *-pp3*) want='^sora_sdk/_sora_cffi\.pypy[0-9]+-pp[0-9]+-[a-z0-9_-]+\.so$' ;;
            *) echo "check_wheel: $wheel is neither a CPython abi3 nor a PyPy wheel" >&2; bad=1; continue ;;
        esac
        if [ "$shims" != 1 ] || [ "$(grep -c . <<<"$modules")" != 1 ] || ! grep -Eq "$want" <<<"$modules" \
                || [ -n "$others" ]; then
            echo "check_wheel: $wheel: want one libsora_c.so and one module matching $want, got" \
                 "$shims shim(s), modules: $(echo $modules), other .so: $(echo $others)" >&2
            bad=1
        else
            echo "check_wheel: $(basename "$wheel"): libsora_c.so + $(basename "$modules"), nothing else"
        fi
    done
    return $bad
}

if [ "${1:-}" = "--contents" ]; then
    shift
    [ $# -gt 0 ] || { echo "check_wheel: --contents needs wheel files" >&2; exit 2; }
    contents "$@"
    exit
fi

PYTHON=python3
SECONDS_ARG=3
while [ $# -gt 1 ]; do
    case "$1" in
        --python) PYTHON=$2; shift 2 ;;
        --seconds) SECONDS_ARG=$2; shift 2 ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: $0 [--python PYTHON] [--seconds N] WHEEL | --contents WHEEL..." >&2; exit 2; }
WHEEL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
contents "$WHEEL"

started=$SECONDS
WORK=$(mktemp -d /tmp/sora-wheel-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "check_wheel: fresh venv in $WORK with $PYTHON ($($PYTHON -V 2>&1))"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off -q "$WHEEL"
installed=$SECONDS

# No compiler on PATH while the installed SDK runs (the cffi module is compiled already: API mode).
mkdir "$WORK/bin"
for tool in dpkg dpkg-query apt-cache; do ln -s "$(command -v $tool)" "$WORK/bin/$tool"; done
cd "$WORK"
PATH="$WORK/venv/bin:$WORK/bin" CC=false CXX=false "$WORK/venv/bin/python" - "$SECONDS_ARG" "$ROOT" "$WORK" <<'PY'
import os, subprocess, sys

seconds, root, work = sys.argv[1], sys.argv[2], sys.argv[3]
import sora_sdk, sora_sdk.demo
where = os.path.realpath(sora_sdk.__file__)
assert where.startswith(os.path.realpath(work) + os.sep), "sora_sdk was imported from %s, not the venv" % where
print("check_wheel: sora_sdk %s from %s" % (sora_sdk.__version__, os.path.dirname(where)), flush=True)
rc = sora_sdk.demo.main(["--seconds", seconds])
if rc != 0:
    sys.exit("check_wheel: the round-trip demo failed (exit %d)" % rc)

mapped = set()
with open("/proc/self/maps") as maps:
    for line in maps:
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/") and ".so" in fields[5]:
            mapped.add(fields[5].strip())
# The venv's own files, and an interpreter that is not Debian's (pyenv, a local build), are not the SDK's needs.
own = [os.path.realpath(work)] + [os.path.realpath(p) for p in {sys.base_prefix, sys.base_exec_prefix}
                                  if not p.startswith("/usr")]
system = sorted(p for p in mapped if not any(os.path.realpath(p).startswith(d + os.sep) for d in own))
variants = {}
for path in system:
    for candidate in {path, os.path.realpath(path)}:
        for alt in (candidate, candidate[4:] if candidate.startswith("/usr/") else "/usr" + candidate):
            variants.setdefault(alt, path)
found = subprocess.run(["dpkg", "-S"] + sorted(variants), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       universal_newlines=True).stdout
owners = {}
for line in found.splitlines():
    packages, _, path = line.partition(": ")
    if path in variants:
        for package in packages.split(", "):
            owners.setdefault(variants[path], set()).add(package.split(":")[0])
unowned = [p for p in system if p not in owners]
if unowned:
    sys.exit("check_wheel: mapped files that no Debian package owns: %s" % unowned)
with open(os.path.join(root, "vendor", "runtime-packages.txt")) as f:
    wanted = [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]
# ... and the Debian package of the interpreter that made the venv (python3.11, pypy3), with its dependencies.
interpreter = subprocess.run(["dpkg", "-S", os.path.realpath(sys.executable)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True).stdout
wanted += [p.split(":")[0] for p in interpreter.partition(": ")[0].split(", ") if p]
closure = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                          "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + wanted,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True).stdout
allowed = {line.strip() for line in closure.splitlines() if line and not line.startswith((" ", "<"))}
used = set().union(*owners.values())
outside = sorted(used - allowed)
if outside:
    sys.exit("check_wheel: the installed SDK used packages that vendor/runtime-packages.txt does not install: %s"
             % outside)
dev = sorted(p for p in used if p.endswith("-dev") or p in ("gcc", "cpp", "binutils"))
assert not dev, dev
print("check_wheel: %d shared objects from %d Debian packages, all installed by vendor/runtime-packages.txt "
      "(no -dev, no compiler)" % (len(system), len(used)))
PY
echo "check_wheel: ok: $(basename "$WHEEL") installed in $((installed - started)) s, round trip and checks in $((SECONDS - installed)) s"
