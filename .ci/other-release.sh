#!/usr/bin/env bash
# CI step: build and test sora_sdk on the OTHER supported Debian release, in a chroot.
#
#   bash .ci/other-release.sh            # as root; on bookworm it tests trixie, on trixie bookworm
#
# 1. debootstrap (minbase) of the other release from Debian's mirror into $SORA_CHROOT
#    (default /var/tmp/sora-chroot-<release>, outside the repository), with its -updates and security suites;
# 2. the repository's tracked and untracked-but-not-ignored files are copied to /src in it (no build outputs,
#    no venvs: the chroot builds everything itself);
# 3. with the network, inside the chroot, the README's steps: `apt-get install make`, `make setup NO_WEB=1`
#    (Debian packages of that release, both venvs from PyPI; npm is not reached) and `make build` for both
#    interpreters. The host's CA certificates are copied in before pip runs (some machines reach PyPI through
#    a proxy whose CA only the host trusts);
# 4. WITHOUT any network (a new network namespace with only loopback): `make demo`, the test set under CPython
#    and the PyPy test set under PyPy.
#
# /proc, /sys, /dev, /dev/pts and a private /dev/shm are mounted into the chroot and always unmounted on exit
# (normal end, failure, timeout signal); processes still running inside it are killed first. The chroot is
# removed at the end unless SORA_CHROOT_KEEP=1 (then a later run reuses it and skips debootstrap).
#
# Knobs: SORA_OTHER_RELEASE (bookworm|trixie), SORA_DEBIAN_MIRROR, SORA_DEBIAN_SECURITY_MIRROR, SORA_CHROOT,
# SORA_CHROOT_KEEP, SORA_CHROOT_TESTS, SORA_CHROOT_PYPY_TESTS, SORA_CHROOT_PYTEST_ARGS, SORA_CHROOT_STEPS (demo cpython pypy).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

host=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
case "$host" in
    bookworm) other=trixie ;;
    trixie) other=bookworm ;;
    *) echo "other-release: this host is '$host'; set SORA_OTHER_RELEASE=bookworm|trixie" >&2; other= ;;
esac
RELEASE=${SORA_OTHER_RELEASE:-$other}
case "$RELEASE" in
    bookworm | trixie) ;;
    *) echo "other-release: unsupported release '$RELEASE' (bookworm or trixie)" >&2; exit 2 ;;
esac
MIRROR=${SORA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SORA_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
ROOT=${SORA_CHROOT:-/var/tmp/sora-chroot-$RELEASE}
KEEP=${SORA_CHROOT_KEEP:-}
# CPython: the whole suite but the parts that need more than the repository and loopback in the chroot: the
# official SDK's tests (test_official_*: they pip-install it at test time), the browser test (npm's sora-js-sdk),
# the bandwidth tests (traffic shaping in network namespaces) and any test file that reads ../shared (outside the
# repository). trixie on 2 cores: 913 tests, ~3.5 min.
if [ -z "${SORA_CHROOT_TESTS:-}" ]; then
    TESTS="tests --ignore-glob=tests/test_official_* --ignore=tests/test_browser_viewer.py"
    TESTS+=" --ignore=tests/test_bandwidth_estimation.py"
    for f in $(grep -lE 'shared/reference|"shared", "reference"' tests/test_*.py 2>/dev/null || true); do TESTS+=" --ignore=$f"; done
else
    TESTS=$SORA_CHROOT_TESTS
fi
# PyPy: the end-to-end media, data-channel, simulcast and server tests (trixie: 70 tests, ~1.7 min).
PYPY_TESTS=${SORA_CHROOT_PYPY_TESTS:-tests/test_e2e_sendonly.py tests/test_e2e_datachannels.py \
tests/test_local_sora_media.py tests/test_local_sora_signaling.py tests/test_simulcast.py \
tests/test_local_sora_simulcast.py tests/test_rtcp_feedback.py}
PYTEST_ARGS=${SORA_CHROOT_PYTEST_ARGS:-}
STEPS=${SORA_CHROOT_STEPS:-demo cpython pypy}

if [ "$(id -u)" != 0 ]; then echo "other-release: needs root (debootstrap, chroot, mount)" >&2; exit 2; fi
ROOT=$(realpath -m "$ROOT")  # as /proc/<pid>/root and /proc/self/mounts name it
case "$ROOT" in /|"$REPO"|"$REPO"/*) echo "other-release: SORA_CHROOT must be outside the repository" >&2; exit 2 ;; esac

log() { echo "other-release: $*"; }
phase_start=$SECONDS
timing=()
phase() { timing+=("$(printf '%-34s %4d s' "$1" $((SECONDS - phase_start)))"); phase_start=$SECONDS; }

# Mount points under ROOT, deepest first.
mounts_under_root() {
    awk -v root="$ROOT" '$2 == root || index($2, root "/") == 1 {print $2}' /proc/self/mounts | sort -r
}

teardown() {
    local rc=$? pid link
    trap - EXIT INT TERM
    # Processes whose root is the chroot: a test left behind, a GStreamer helper, gpg-agent, ...
    for pid in /proc/[0-9]*; do
        link=$(readlink "$pid/root" 2>/dev/null || true)
        if [ "$link" = "$ROOT" ]; then kill -KILL "${pid#/proc/}" 2>/dev/null || true; fi
    done
    sleep 0.5
    local m
    for m in $(mounts_under_root); do
        umount "$m" 2>/dev/null || umount -l "$m" || echo "other-release: warning: cannot unmount $m" >&2
    done
    if [ -n "$(mounts_under_root)" ]; then
        echo "other-release: warning: still mounted under $ROOT; not removing it" >&2
    elif [ -z "$KEEP" ] && [ -d "$ROOT" ]; then
        rm -rf --one-file-system "$ROOT"
    fi
    echo
    printf 'other-release: %s\n' "${timing[@]}"
    echo "other-release: $RELEASE chroot step finished in ${SECONDS}s (exit $rc)"
    exit "$rc"
}
trap teardown EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

SECONDS=0
# A previous run killed hard may have left mounts behind.
for m in $(mounts_under_root); do umount "$m" 2>/dev/null || umount -l "$m"; done
if [ -z "$KEEP" ] || [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    rm -rf --one-file-system "$ROOT"
    tools=()
    command -v debootstrap >/dev/null || tools+=(debootstrap)
    command -v ip >/dev/null || tools+=(iproute2)  # loopback up in the tests' network namespace
    if [ "${#tools[@]}" -ne 0 ]; then
        log "installing ${tools[*]}"
        apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 "${tools[@]}"
    fi
    log "debootstrap $RELEASE from $MIRROR into $ROOT"
    debootstrap --variant=minbase "$RELEASE" "$ROOT" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 || {
        tail -n 40 "$ROOT.debootstrap.log" >&2; exit 1; }
    rm -f "$ROOT.debootstrap.log"
    phase "debootstrap"
fi

# apt sources of the release, its point updates and its security updates (Debian's mirrors only).
rm -f "$ROOT/etc/apt/sources.list"
cat > "$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $RELEASE $RELEASE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $RELEASE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# A minbase bookworm has no /etc/hosts: "localhost" would go to DNS, which the tests cannot reach.
if ! grep -qs '^127\.0\.0\.1[[:space:]].*localhost' "$ROOT/etc/hosts"; then
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >> "$ROOT/etc/hosts"
fi
# No services start inside the chroot.
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

mkdir -p "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$ROOT/dev/shm"

# The sources, as a fresh clone would have them (SORA_CHROOT_KEEP: copied over the last run's, whose venvs and
# build outputs stay).
if [ -z "$KEEP" ]; then rm -rf "$ROOT/src"; fi
mkdir -p "$ROOT/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && [ ! -d "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf - | tar -xf - -C "$ROOT/src"
else  # a source tree without git: everything but what the build and setup make
    tar --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./vendor/npm --exclude='*.so' \
        --exclude='*.o' --exclude=__pycache__ --exclude='*.sora-setup.stamp' -cf - . | tar -xf - -C "$ROOT/src"
fi
log "copied $(find "$ROOT/src" -type f | wc -l) files of $REPO to $ROOT/src"

# in_chroot [--offline] COMMAND: run a bash command in /src inside the chroot, with a clean environment. It runs
# in the background and the script waits for it, so a TERM (CI's timeout) runs the teardown at once.
in_chroot() {
    run_in_chroot "$@" &
    wait $!
}
run_in_chroot() {
    local net=()
    if [ "$1" = --offline ]; then
        shift
        # A new network namespace: loopback only, nothing outside reachable.
        net=(unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh)
    fi
    "${net[@]}" chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        PIP_ROOT_USER_ACTION=ignore PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
        bash -euo pipefail -c "cd /src && $1"
}

log "Debian packages (the README's first step, then make apt-packages)"
in_chroot "apt-get update -o Dpkg::Use-Pty=0 && apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 make \
    && make apt-packages"
phase "Debian packages"
# pip reaches PyPI with the host's trust store (and keeps it across a later update-ca-certificates).
# (the chroot's links there are absolute: they would resolve to the host's own files, so they go first)
mkdir -p "$ROOT/usr/local/share/ca-certificates"
cp -rL /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
rm -rf "$ROOT/etc/ssl/certs"
cp -rL /etc/ssl/certs "$ROOT/etc/ssl/certs"
log "venvs and build"
in_chroot "make setup NO_WEB=1 && make build NO_WEB=1 && make build PY=pypy3 NO_WEB=1"
phase "venvs (PyPI) and build"
in_chroot ". /etc/os-release; echo \"other-release: \$PRETTY_NAME, GStreamer \$(gst-launch-1.0 --gst-version | grep -o '[0-9.]*\$'), \$(.venv/bin/python -V), \$(.venv-pypy/bin/python -c 'import sys; print(\"PyPy\", sys.version.split()[0], \"(\" + sys.version.split(\"[PyPy \")[1].split()[0] + \")\")'), numpy \$(.venv/bin/python -c 'import numpy; print(numpy.__version__)') / \$(.venv-pypy/bin/python -c 'import numpy; print(numpy.__version__)')\""

failed=()
results=()
# step NAME COMMAND: run offline in the chroot, record pass/fail and pytest's counts.
step() {
    local name=$1 cmd=$2 out rc counts
    out=$(mktemp)
    echo
    echo "---------------- other-release ($RELEASE): $name ----------------"
    set +e
    (run_in_chroot --offline "$cmd" 2>&1 | tee "$out") &
    wait $!
    rc=$?
    set -e
    counts=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$out" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//' || true)
    rm -f "$out"
    phase "$name"
    if [ "$rc" -ne 0 ]; then
        failed+=("$name")
        results+=("$RELEASE $name: FAILED (exit $rc) ${counts}")
    else
        results+=("$RELEASE $name: ok ${counts}")
    fi
}

case " $STEPS " in *" demo "*) step "make demo" "SORA_DEMO_SECONDS=3 make demo NO_WEB=1" ;; esac
case " $STEPS " in *" cpython "*) step "CPython tests" "make test NO_WEB=1 TESTS='$TESTS' ARGS='$PYTEST_ARGS'" ;; esac
case " $STEPS " in *" pypy "*) step "PyPy tests" "make test PY=pypy3 NO_WEB=1 TESTS='$PYPY_TESTS' ARGS='$PYTEST_ARGS'" ;; esac

echo
printf 'other-release: %s\n' "${results[@]}"
# (the last line with "N passed" is what .ci/run counts)
if [ "${#failed[@]}" -ne 0 ]; then
    echo "other-release: failed on $RELEASE: ${failed[*]}" >&2
    exit 1
fi
