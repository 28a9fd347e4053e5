# sora_sdk — build, test and demo entry points.
#
#   make setup            apt packages (vendor/debian-packages*.txt) + .venv + .venv-pypy + web
#   make web              sora-js-sdk (npm) into vendor/npm for the local server's /viewer/ page
#   make build            build/libsora_c.so -> sora_sdk/libsora_c.so + cffi module
#   make test             setup + build + pytest (CPython venv)
#   make test PY=pypy3    the same suite under the PyPy venv
#   make demo             the round-trip demo (CPython venv with the runtime packages only)
#   make wheel            dist/: CPython abi3 + PyPy wheels; make wheel-check runs the demo from each
#   make bench | clean | distclean
#
# Extra pytest arguments: make test ARGS='-k datachannel -x'  TESTS=tests/test_x.py
# Extra pip requirements for both venvs: list them in requirements-dev.txt
# (picked up automatically when it exists) or pass PIP_EXTRA='pkg==1.0'.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build
.DELETE_ON_ERROR:
.SUFFIXES:

# ---------------------------------------------------------------------------
# Interpreter selection. PY names the base interpreter: anything containing
# "pypy" selects .venv-pypy, everything else selects the CPython .venv.
# VENVPY is the venv's python that every target runs.
# ---------------------------------------------------------------------------
PY      ?= python3
CPYTHON ?= python3
PYPY    ?= pypy3
ifneq (,$(findstring pypy,$(PY)))
  PYPY := $(PY)
  VENV ?= .venv-pypy
else
  CPYTHON := $(PY)
  VENV ?= .venv
endif
VENVPY := $(VENV)/bin/python

CPY_VENV  := .venv
PYPY_VENV := .venv-pypy
STAMP     := .sora-setup.stamp
SETUP_VENVS ?= $(CPY_VENV) $(PYPY_VENV)

# Pinned Python packages: vendor/python-requirements.txt, installed into both venvs. Its pins follow the
# interpreter with pip environment markers (numpy 2.0.2 for Debian 12's CPython 3.11 and PyPy 3.9, numpy 2.3.5
# for Debian 13's CPython 3.13 and PyPy 3.11; cffi for CPython only: PyPy has it built in).
PIP_PINS     := vendor/python-requirements.txt
PIP_EXTRA    ?=
EXTRA_REQS   := $(wildcard requirements-dev.txt)
PIP_FLAGS    := --disable-pip-version-check --no-input --progress-bar off
export PIP_ROOT_USER_ACTION := ignore

# Debian packages (comments stripped): the list both releases share plus the one of the release this machine
# runs, which /etc/os-release names (DEB_RELEASE=bookworm|trixie overrides it).
DEB_RELEASE  ?= $(shell . /etc/os-release 2>/dev/null && echo "$${VERSION_CODENAME:-}")
DEB_LIST     := vendor/debian-packages.txt
DEB_RELEASE_LIST := vendor/debian-packages-$(or $(DEB_RELEASE),unknown).txt
DEB_PACKAGES := $(shell sed -e 's/\#.*//' $(DEB_LIST) $(wildcard $(DEB_RELEASE_LIST)) 2>/dev/null)
SKIP_APT     ?=

# ---------------------------------------------------------------------------
# C shim
# ---------------------------------------------------------------------------
SRC_DIR   ?= csrc/src
INC_DIR   ?= csrc/include
BUILD_DIR ?= build
PKG_DIR   ?= sora_sdk
FFI_SCRIPT ?= build_ffi.py

C_SRCS   ?= $(wildcard $(SRC_DIR)/*.c)
CXX_SRCS ?= $(wildcard $(SRC_DIR)/*.cpp)
OBJS := $(patsubst $(SRC_DIR)/%.c,$(BUILD_DIR)/obj/%.o,$(C_SRCS)) \
        $(patsubst $(SRC_DIR)/%.cpp,$(BUILD_DIR)/obj/%.cpp.o,$(CXX_SRCS))

ifeq ($(origin CC),default)
  CC := gcc
endif
ifeq ($(origin CXX),default)
  CXX := g++
endif
PKG_MODULES := gstreamer-1.0 gstreamer-webrtc-1.0 gstreamer-sdp-1.0 gstreamer-app-1.0 \
               gstreamer-video-1.0 gstreamer-audio-1.0 gstreamer-rtp-1.0 gstreamer-pbutils-1.0 nice libcrypto \
               dav1d aom
WARN      ?= -Wall -Wextra
CFLAGS    ?= -O2 -g
CXXFLAGS  ?= -O2 -g
SHIM_CFLAGS   := $(CFLAGS) -fPIC $(WARN) -std=gnu11 -fvisibility=hidden -I$(INC_DIR) -I$(SRC_DIR)
SHIM_CXXFLAGS := $(CXXFLAGS) -fPIC $(WARN) -std=gnu++17 -fvisibility=hidden -I$(INC_DIR) -I$(SRC_DIR)
LDFLAGS   ?=
LDLIBS    ?= -lyuv -lz -ldl -lpthread -lm
LINK      := $(if $(strip $(CXX_SRCS)),$(CXX),$(CC))

SHIM      := $(BUILD_DIR)/libsora_c.so
SHIM_PKG  := $(PKG_DIR)/libsora_c.so
PKG_CFLAGS_FILE := $(BUILD_DIR)/pkg-config.cflags
PKG_LIBS_FILE   := $(BUILD_DIR)/pkg-config.libs
# The cffi module is not linked against the shim (sora_sdk/_ffi.py loads it
# with RTLD_GLOBAL first), so only the script and the public headers matter.
FFI_DEPS := $(FFI_SCRIPT) $(wildcard $(INC_DIR)/*.h)

.PHONY: all help setup apt-packages venvs build shim ffi test demo bench clean distclean

all: build

help:
	@sed -n '2,12p' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------
setup: apt-packages $(addsuffix /$(STAMP),$(SETUP_VENVS)) web
	@echo "setup: ok ($(SETUP_VENVS))"

# Runs every time but costs one dpkg-query when nothing is missing (works offline).
apt-packages:
	@if [ -n "$(SKIP_APT)" ]; then echo "setup: SKIP_APT set, not checking Debian packages"; exit 0; fi
	@if [ -z "$(strip $(DEB_PACKAGES))" ]; then echo "setup: $(DEB_LIST) is missing or empty" >&2; exit 1; fi
	@if ! command -v dpkg-query >/dev/null; then \
	    echo "setup: dpkg-query not found; this Makefile targets Debian 12 and 13. Install the packages in $(DEB_LIST) yourself and use SKIP_APT=1" >&2; exit 1; fi
	@if [ ! -f "$(DEB_RELEASE_LIST)" ]; then \
	    echo "setup: Debian release '$(DEB_RELEASE)' (/etc/os-release) is not supported: there is no $(DEB_RELEASE_LIST)." \
	         "Supported: $(patsubst vendor/debian-packages-%.txt,%,$(wildcard vendor/debian-packages-*.txt))." \
	         "Set DEB_RELEASE=<one of them> to try its list, or SKIP_APT=1 to manage the packages yourself" >&2; exit 1; fi
	@installed=$$(dpkg-query -W -f='$${Package} $${db:Status-Status}\n' $(DEB_PACKAGES) 2>/dev/null \
	              | awk '$$2 == "installed" {print $$1}' | sort -u || true); \
	missing=$$(comm -23 <(printf '%s\n' $(DEB_PACKAGES) | sort -u) <(printf '%s\n' "$$installed")); \
	if [ -z "$$missing" ]; then echo "setup: all $(words $(DEB_PACKAGES)) Debian packages are installed"; exit 0; fi; \
	missing=$$(echo $$missing); \
	echo "setup: installing Debian packages: $$missing"; \
	sudo=; if [ "$$(id -u)" != 0 ]; then sudo=sudo; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt_install() { $$sudo apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 $$missing; }; \
	if ! apt_install; then \
	    echo "setup: apt-get install failed; running apt-get update and retrying"; \
	    $$sudo apt-get update -o Dpkg::Use-Pty=0; apt_install; \
	fi

venvs: $(addsuffix /$(STAMP),$(SETUP_VENVS))

# (Re)creates the venv when its python is missing or broken, then installs the
# pinned packages. The stamp is refreshed when the Makefile or
# requirements-dev.txt changes.
$(CPY_VENV)/$(STAMP): Makefile $(PIP_PINS) $(EXTRA_REQS) | apt-packages
	@if ! $(CPY_VENV)/bin/python -c 'import sys' >/dev/null 2>&1; then \
	    command -v $(CPYTHON) >/dev/null || { echo "setup: $(CPYTHON) not found on PATH" >&2; exit 1; }; \
	    $(CPYTHON) -c 'import sys, platform; assert platform.python_implementation() == "CPython" and sys.version_info >= (3, 9), sys.version' \
	      || { echo "setup: $(CPYTHON) must be CPython >= 3.9 (Debian 12: 3.11, Debian 13: 3.13)" >&2; exit 1; }; \
	    echo "setup: creating $(CPY_VENV) with $$(command -v $(CPYTHON)) ($$($(CPYTHON) -V 2>&1))"; \
	    rm -rf $(CPY_VENV); \
	    $(CPYTHON) -m venv $(CPY_VENV) || { rm -rf $(CPY_VENV); \
	      echo "setup: '$(CPYTHON) -m venv' failed; on Debian install python3-venv (listed in $(DEB_LIST))" >&2; exit 1; }; \
	fi
	$(CPY_VENV)/bin/python -m pip install $(PIP_FLAGS) -r $(PIP_PINS) $(PIP_EXTRA)
	$(if $(EXTRA_REQS),$(CPY_VENV)/bin/python -m pip install $(PIP_FLAGS) -r $(EXTRA_REQS))
	$(CPY_VENV)/bin/python -c 'import numpy, cffi, pytest, pytest_timeout; print("setup: $(CPY_VENV):", __import__("sys").version.split()[0], "numpy", numpy.__version__, "cffi", cffi.__version__)'
	@touch $@

$(PYPY_VENV)/$(STAMP): Makefile $(PIP_PINS) $(EXTRA_REQS) | apt-packages
	@if ! $(PYPY_VENV)/bin/python -c 'import sys' >/dev/null 2>&1; then \
	    command -v $(PYPY) >/dev/null || { echo "setup: $(PYPY) not found on PATH (Debian package pypy3)" >&2; exit 1; }; \
	    echo "setup: creating $(PYPY_VENV) with $$(command -v $(PYPY))"; \
	    rm -rf $(PYPY_VENV); \
	    $(PYPY) -m venv $(PYPY_VENV) || { rm -rf $(PYPY_VENV); \
	      echo "setup: '$(PYPY) -m venv' failed; on Debian install pypy3-venv (listed in $(DEB_LIST))" >&2; exit 1; }; \
	fi
	$(PYPY_VENV)/bin/python -m pip install $(PIP_FLAGS) -r $(PIP_PINS) $(PIP_EXTRA)
	$(if $(EXTRA_REQS),$(PYPY_VENV)/bin/python -m pip install $(PIP_FLAGS) -r $(EXTRA_REQS))
	$(PYPY_VENV)/bin/python -c 'import sys, numpy, cffi, pytest, pytest_timeout; assert sys.implementation.name == "pypy"; print("setup: $(PYPY_VENV): PyPy", sys.version.split()[0], "numpy", numpy.__version__, "cffi", cffi.__version__)'
	@touch $@

# ---------------------------------------------------------------------------
# web: the npm package sora-js-sdk for the browser viewer that the local server
# serves at /viewer/ (tests/test_browser_viewer.py drives it in Debian's
# chromium). Staged in vendor/npm (git-ignored). Without npm (and no apt to get
# Debian's npm) or without the registry this only warns: the viewer says so and
# its test skips.
# ---------------------------------------------------------------------------
SORA_JS_SDK_VERSION ?= 2026.1.0
WEB_DIR := vendor/npm
NO_WEB  ?=

.PHONY: web
web:
	@if [ -n "$(NO_WEB)" ]; then echo "web: NO_WEB set, not installing sora-js-sdk"; exit 0; fi; \
	if grep -qs '"version": "$(SORA_JS_SDK_VERSION)"' $(WEB_DIR)/node_modules/sora-js-sdk/package.json; then \
	    echo "web: sora-js-sdk $(SORA_JS_SDK_VERSION) is in $(WEB_DIR)"; exit 0; fi; \
	if ! command -v npm >/dev/null && [ -z "$(SKIP_APT)" ] && command -v apt-get >/dev/null; then \
	    echo "web: npm not found; installing Debian's npm"; \
	    sudo=; if [ "$$(id -u)" != 0 ]; then sudo=sudo; fi; \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 npm || true; \
	fi; \
	if ! command -v npm >/dev/null; then \
	    echo "web: warning: npm not found; the viewer page has no sora-js-sdk (its test skips)"; exit 0; fi; \
	mkdir -p $(WEB_DIR); \
	if npm install --prefix $(WEB_DIR) --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
	        sora-js-sdk@$(SORA_JS_SDK_VERSION); then \
	    echo "web: sora-js-sdk $(SORA_JS_SDK_VERSION) installed in $(WEB_DIR)"; \
	else echo "web: warning: npm install sora-js-sdk@$(SORA_JS_SDK_VERSION) failed (its test skips)"; fi

# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------
build: shim ffi

shim: $(SHIM_PKG)

$(PKG_CFLAGS_FILE) $(PKG_LIBS_FILE) &: Makefile | apt-packages
	@mkdir -p $(BUILD_DIR)
	pkg-config --cflags $(PKG_MODULES) > $(PKG_CFLAGS_FILE).tmp
	pkg-config --libs $(PKG_MODULES) > $(PKG_LIBS_FILE).tmp
	@mv -f $(PKG_CFLAGS_FILE).tmp $(PKG_CFLAGS_FILE)
	@mv -f $(PKG_LIBS_FILE).tmp $(PKG_LIBS_FILE)

$(BUILD_DIR)/obj/%.o: $(SRC_DIR)/%.c $(PKG_CFLAGS_FILE) Makefile
	@mkdir -p $(@D)
	$(CC) $(SHIM_CFLAGS) $$(cat $(PKG_CFLAGS_FILE)) -MMD -MP -c $< -o $@

$(BUILD_DIR)/obj/%.cpp.o: $(SRC_DIR)/%.cpp $(PKG_CFLAGS_FILE) Makefile
	@mkdir -p $(@D)
	$(CXX) $(SHIM_CXXFLAGS) $$(cat $(PKG_CFLAGS_FILE)) -MMD -MP -c $< -o $@

$(SHIM): $(OBJS) $(PKG_LIBS_FILE)
	@if [ -z "$(strip $(OBJS))" ]; then echo "build: no sources in $(SRC_DIR)/*.c" >&2; exit 1; fi
	$(LINK) -shared -Wl,-soname,libsora_c.so -Wl,--no-undefined -o $@ $(OBJS) $(LDFLAGS) $$(cat $(PKG_LIBS_FILE)) $(LDLIBS)

# Copy via a temporary name + rename so a process that has the old library
# mapped is not corrupted.
$(SHIM_PKG): $(SHIM)
	@mkdir -p $(@D)
	cp -f $< $@.tmp
	@mv -f $@.tmp $@

# The cffi module's file name depends on the interpreter's EXT_SUFFIX, so the
# up-to-date check happens in the recipe.
ffi: $(SHIM_PKG) $(VENV)/$(STAMP)
	@test -f $(FFI_SCRIPT) || { echo "build: $(FFI_SCRIPT) not found" >&2; exit 1; }
	@suffix=$$($(VENVPY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))'); \
	out=$(PKG_DIR)/_sora_cffi$$suffix; \
	if [ -f "$$out" ] && [ -z "$$(find $(FFI_DEPS) -newer "$$out" 2>/dev/null)" ]; then \
	    echo "build: $$out is up to date"; \
	else \
	    echo "$(VENVPY) $(FFI_SCRIPT)"; \
	    $(VENVPY) $(FFI_SCRIPT); \
	    test -f "$$out" || { echo "build: $(FFI_SCRIPT) did not produce $$out" >&2; exit 1; }; \
	    touch "$$out"; \
	fi

-include $(OBJS:.o=.d)

# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------
TESTS ?= tests
ARGS  ?=
PYTEST_TIMEOUT ?= 300

test: setup build
	$(VENVPY) -m pytest -v --timeout=$(PYTEST_TIMEOUT) $(ARGS) $(TESTS)

# Reliability suite (tests/reliability/, issue 5): fuzz, leaks/lifetime, faults, load. Not part of `make test`
# (its files are named check_*.py). Writes benchmarks/RELIABILITY.md (RELIABILITY-pypy.md with PY=pypy3).
# Knobs (environment): RELIABILITY_LOAD_SECONDS (120), RELIABILITY_CYCLES (1000), RELIABILITY_FUZZ_SCALE (1).
RELIABILITY_REPORT ?= benchmarks/RELIABILITY$(if $(findstring pypy,$(VENV)),-pypy).md
# RELIABILITY_TESTS picks parts, e.g. RELIABILITY_TESTS='tests/reliability/check_lifetime.py tests/reliability/check_load.py'.
RELIABILITY_TIMEOUT ?= 1200
RELIABILITY_TESTS ?= tests/reliability
.PHONY: test-reliability
test-reliability: setup build
	RELIABILITY_REPORT=$(RELIABILITY_REPORT) $(VENVPY) -m pytest -v --timeout=$(RELIABILITY_TIMEOUT) $(ARGS) $(RELIABILITY_TESTS)

# AddressSanitizer (issue 5): libsora_c built with -fsanitize=address into $(ASAN_BUILD_DIR) (the normal build is
# untouched), then the end-to-end tests run with that shim (SORA_SDK_LIBRARY) and libasan preloaded into the
# interpreter. tests/reliability/asan_plugin.py checks that the ASan shim is what the tests load, and fails the
# run if any process of it (pytest or a server child) wrote an ASan report into $(ASAN_LOG_DIR).
# Overrides: ASAN_TESTS='tests/x.py', ASAN_OPTIONS_EXTRA=':detect_stack_use_after_return=1'.
ASAN_BUILD_DIR ?= build/asan
ASAN_SHIM      := $(ASAN_BUILD_DIR)/libsora_c.so
ASAN_CFLAGS    := -O1 -g -fsanitize=address -fno-omit-frame-pointer
ASAN_LOG_DIR   ?= $(ASAN_BUILD_DIR)/logs
# The default set (~5 min): the ABI suite, every end-to-end file without external programs or timing bounds that
# ASan's slowdown could break, the reliability faults (minus the up-to-75 s UDP mid-call check) and the live fuzz parts at 1/4 scale.
ASAN_TESTS     ?= tests/abi tests/test_e2e_sendonly.py tests/test_e2e_datachannels.py tests/test_local_sora_media.py \
                  tests/test_local_sora_signaling.py tests/test_encoded_transform.py tests/test_signaling_errors.py \
                  tests/test_signaling_flow.py tests/test_reoffer_validation.py tests/test_engine_context.py \
                  tests/test_e2e_secure_transport.py tests/test_e2e_proxy.py tests/test_codec.py tests/test_av1.py \
                  tests/test_simulcast.py tests/test_local_sora_simulcast.py tests/test_local_sora_switched.py \
                  tests/test_local_sora_spotlight_speakers.py tests/test_openh264.py tests/test_lifecycle.py \
                  tests/reliability/check_lifecycle.py::test_random_lifecycle_sequences \
                  tests/reliability/check_faults.py --deselect tests/reliability/check_faults.py::test_udp_blackholed_mid_call \
                  tests/reliability/check_fuzz.py::test_fuzz_message_handlers_of_live_connections \
                  tests/reliability/check_fuzz.py::test_fuzz_real_sockets
ASAN_FUZZ_SCALE ?= 0.25
ASAN_OPTIONS_EXTRA ?=
# detect_leaks=0: the interpreter and GStreamer keep process-lifetime allocations that LeakSanitizer would list.
ASAN_RUN_OPTIONS := detect_leaks=0:halt_on_error=1:abort_on_error=0:allocator_may_return_null=1:detect_odr_violation=0:strict_string_checks=0:check_initialization_order=1:log_path=$(abspath $(ASAN_LOG_DIR))/asan$(ASAN_OPTIONS_EXTRA)
.PHONY: asan-shim test-asan
asan-shim: setup
	$(MAKE) --no-print-directory BUILD_DIR=$(ASAN_BUILD_DIR) CFLAGS='$(ASAN_CFLAGS)' CXXFLAGS='$(ASAN_CFLAGS)' \
	    LDFLAGS='-fsanitize=address' $(ASAN_SHIM)

test-asan: asan-shim build
	rm -rf $(ASAN_LOG_DIR) && mkdir -p $(ASAN_LOG_DIR)
	@rc=0; set -x; SORA_SDK_LIBRARY=$(abspath $(ASAN_SHIM)) SORA_ASAN_LOG_DIR=$(abspath $(ASAN_LOG_DIR)) \
	    RELIABILITY_FUZZ_SCALE=$${RELIABILITY_FUZZ_SCALE:-$(ASAN_FUZZ_SCALE)} \
	    ASAN_OPTIONS='$(ASAN_RUN_OPTIONS)' LD_PRELOAD=$$($(CC) -print-file-name=libasan.so) \
	    PYTHONPATH=tests/reliability $(VENVPY) -m pytest -v -p asan_plugin --timeout=$(PYTEST_TIMEOUT) $(ARGS) \
	    $(ASAN_TESTS) || rc=$$?; set +x; \
	for report in $(ASAN_LOG_DIR)/asan*; do \
	    [ -f "$$report" ] || continue; echo "==== test-asan: ASan report $$report"; head -n 200 "$$report"; \
	    [ "$$rc" -ne 0 ] || rc=1; done; \
	echo "test-asan: $$(ls $(ASAN_LOG_DIR) | wc -l) ASan report(s); pytest exit $$rc"; exit $$rc

# make demo / make wheel need only the pinned packages in the venv(s): not the type checker and the property
# tests of requirements-dev.txt, not sora-js-sdk, and make demo not the PyPy venv. Their venv stamp has its own
# name, so a later `make test` still installs the rest.
LIGHT := STAMP=.sora-runtime.stamp EXTRA_REQS=

demo:
	@$(MAKE) --no-print-directory $(LIGHT) apt-packages build
	$(VENVPY) -m sora_sdk.demo $(ARGS)

# make wheel: $(WHEEL_DIR)/ gets a CPython abi3 wheel and a PyPy wheel of the shim `make build` made, each
# checked to hold exactly one libsora_c.so and one cffi module. make wheel-check installs each into a fresh venv
# outside the tree and runs the round-trip demo from it (tests/check_wheel.sh; ~20 + 25 s after make wheel).
WHEEL_DIR ?= dist
.PHONY: wheel wheel-check
wheel:
	@$(MAKE) --no-print-directory $(LIGHT) apt-packages shim $(CPY_VENV)/.sora-runtime.stamp $(PYPY_VENV)/.sora-runtime.stamp
	rm -f $(WHEEL_DIR)/sora_sdk-*.whl
	for py in $(CPY_VENV)/bin/python $(PYPY_VENV)/bin/python; do \
	    SORA_SDK_SKIP_SHIM=1 $$py -m pip wheel $(PIP_FLAGS) --no-build-isolation --no-deps -q -w $(WHEEL_DIR) . ; done
	bash tests/check_wheel.sh --contents $(WHEEL_DIR)/sora_sdk-*.whl

wheel-check: wheel
	@passed=0; failed=0; \
	for spec in "$(CPYTHON) $(WHEEL_DIR)/sora_sdk-*-abi3-*.whl" "$(PYPY) $(WHEEL_DIR)/sora_sdk-*-pp3*.whl"; do \
	    set -- $$spec; \
	    if bash tests/check_wheel.sh --python $$1 $$2; then passed=$$((passed + 1)); else failed=$$((failed + 1)); fi; \
	done; \
	echo "wheel-check: $$passed passed, $$failed failed"; test $$failed -eq 0

bench: setup build
	$(VENVPY) -m benchmarks.run $(ARGS)

# Ours vs the official Sora Python SDK (PyPI, in .venv-official, run in a network namespace: needs root),
# same local server, same work; writes its section of benchmarks/RESULTS.md. Knobs: ARGS='--runs 1 --codecs VP8'
# or SORA_COMPARE_RUNS / SORA_COMPARE_SECONDS / SORA_COMPARE_CODECS / SORA_COMPARE_SIZES.
.PHONY: bench-compare
bench-compare: setup build
	$(VENVPY) -m benchmarks.compare $(ARGS)

clean:
	rm -rf $(BUILD_DIR) .pytest_cache .hypothesis *.egg-info $(WHEEL_DIR)
	rm -f $(SHIM_PKG) $(SHIM_PKG).tmp $(PKG_DIR)/_sora_cffi*.so $(PKG_DIR)/_sora_cffi.c $(PKG_DIR)/_sora_cffi.o _sora_cffi.c _sora_cffi.o
	find . -name __pycache__ -type d -not -path './.venv*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(CPY_VENV) $(PYPY_VENV)
