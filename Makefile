# pyrycode-relay: an io_uring WebSocket relay for pyrycode. See README.md.
#
#   make              build the relay and tools (gcc, -O2, -Werror)
#   make CC=clang     the same with clang
#   make run          install build deps if missing, build, start on 127.0.0.1 (plaintext)
#   make test         install test deps if missing, run the whole suite (what CI runs)
#   make unit         unit tests for the current CC/SAN
#   make SAN=asan     build with ASan+UBSan (SAN=tsan: ThreadSanitizer)
#   make fuzz         run every libFuzzer target FUZZ_SECONDS (default 60) each (clang);
#                     make fuzz-bins only builds them
#   make soak         10,000 connections churning for SOAK_SECONDS (default 600; make test: 20)
#   make install      binary, man page pyrycode-relay(8) and deploy/ files under PREFIX
#                     (default /usr/local; DESTDIR for staging; see README "Install")
#
# Builds go to build/<compiler>[-<sanitizer>]/ so variants never mix objects.
# VERSION=x.y.z stamps --version and /healthz (default "dev", like the reference).

.DEFAULT_GOAL := all
.SUFFIXES:
.DELETE_ON_ERROR:

CC      ?= cc
SAN     ?=
COMPILER := $(notdir $(firstword $(CC)))
BUILD   ?= build/$(COMPILER)$(if $(SAN),-$(SAN),)

include third_party/liburing.mk
include third_party/boringssl.mk

VERSION ?= dev

OPT     ?= -O2
WARN    := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wvla -Wmissing-prototypes \
           -Wstrict-prototypes -Wno-unused-parameter
CPPFLAGS_ALL := -D_GNU_SOURCE -Isrc -DPYRELAY_VERSION='"$(VERSION)"' $(URING_CFLAGS) $(BSSL_CFLAGS)
CFLAGS_ALL   := -std=gnu17 -g $(OPT) -fno-omit-frame-pointer $(WARN) -MMD -MP

ifeq ($(SAN),asan)
  SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all
else ifeq ($(SAN),tsan)
  SANFLAGS := -fsanitize=thread
else ifeq ($(SAN),fuzz)
  SANFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all \
              -DPYRELAY_FUZZING=1
else ifneq ($(SAN),)
  $(error SAN must be empty, asan, tsan or fuzz)
endif

LIBS := $(URING_LIBS) $(BSSL_LIBS) -lpthread -lm

# C++ for the one file that needs it (src/transport/tls13_secrets.cc: this BoringSSL
# has SSL_get_traffic_secrets in its C++ API only), from the same toolchain as CC:
# gcc -> g++, clang-14 -> clang++-14, cc -> c++. CXX=... overrides. The shim uses no
# C++ runtime (no exceptions, no RTTI, no new), so every link stays a C link.
ifeq ($(origin CXX),default)
  CXX := $(dir $(firstword $(CC)))$(if $(findstring clang,$(COMPILER)),$(subst clang,clang++,$(COMPILER)),$(if $(findstring gcc,$(COMPILER)),$(subst gcc,g++,$(COMPILER)),$(if $(filter cc,$(COMPILER)),c++,g++)))
  CXX := $(patsubst ./%,%,$(CXX))
endif
CXXWARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wvla -Wmissing-declarations -Wno-unused-parameter
CXXFLAGS_ALL := -std=gnu++17 -g $(OPT) -fno-omit-frame-pointer -fno-exceptions -fno-rtti $(CXXWARN) -MMD -MP
# clang's UBSan -fsanitize=function (C++ only) tags each C++ function with its type's
# RTTI, which would pull libstdc++'s ABI library into every C link. The shim is only
# ever called directly from C: that check has nothing to catch there.
CXX_SANFLAGS := $(SANFLAGS) $(if $(and $(findstring clang,$(COMPILER)),$(findstring undefined,$(SANFLAGS))),-fno-sanitize=function)

MAIN_SRC := src/main.c
LIB_SRCS := $(filter-out $(MAIN_SRC),$(sort $(wildcard src/*.c src/*/*.c)))
LIB_CXX_SRCS := $(sort $(wildcard src/*/*.cc))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o) $(LIB_CXX_SRCS:%.cc=$(BUILD)/obj/%.o)
LIB      := $(BUILD)/libpyrelay.a
RELAY    := $(BUILD)/pyrycode-relay

# tools/<name>/*.c -> $(BUILD)/<name>, each linked with the relay's library
TOOL_DIRS := $(sort $(patsubst %/,%,$(dir $(wildcard tools/*/*.c))))
TOOL_BINS := $(TOOL_DIRS:tools/%=$(BUILD)/%)

UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=build/fuzz/%)

.PHONY: all deps deps-test run test unit fuzz fuzz-bins fuzz-build fuzz-smoke clean tools install uninstall

# The man page is generated from the binary's own --help (src/config/usage.c), so the
# two cannot drift; tools/man-from-help.sh turns that text into roff. Sanitizer builds
# skip it in `all`: running a TSan binary needs a fixed address layout (setarch -R).
MAN := $(BUILD)/pyrycode-relay.8

all: $(RELAY) $(if $(SAN),,$(MAN)) $(TOOL_BINS)
tools: $(TOOL_BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) $(SANFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS_ALL) $(CXXFLAGS_ALL) $(CXX_SANFLAGS) $(CXXFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(RELAY): $(BUILD)/obj/src/main.o $(LIB)
	$(CC) $(SANFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS)

$(MAN): $(RELAY) tools/man-from-help.sh
	$(RELAY) --help > $@.help
	tools/man-from-help.sh $(VERSION) < $@.help > $@
	rm -f $@.help

define TOOL_RULE
$(BUILD)/$(1): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tools/$(1)/*.c)) $(LIB)
	$$(CC) $$(SANFLAGS) $$(LDFLAGS) -o $$@ $$^ $$(LIBS) -lm
endef
$(foreach t,$(TOOL_DIRS:tools/%=%),$(eval $(call TOOL_RULE,$(t))))

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS) -lcmocka -lm

unit: $(UNIT_BINS)
	@tests/run_unit.sh $(UNIT_BINS)

# libFuzzer targets (tests/fuzz/fuzz_*.c, corpus in tests/fuzz/corpus/<name>/): always
# clang, ASan+UBSan, with their own copy of the library in build/fuzz/.
#   make fuzz-bins    build them
#   make fuzz         run each for FUZZ_SECONDS (default 60) over its corpus
#   make fuzz-smoke   the same for FUZZ_SMOKE_SECONDS each (default 5): the `make test` stage
FUZZ_CC ?= clang-14
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 5
fuzz-bins:
	@$(MAKE) --no-print-directory CC=$(FUZZ_CC) SAN=fuzz BUILD=build/fuzz fuzz-build

# internal: the sub-make above, with the fuzz toolchain and flags
fuzz-build: $(FUZZ_BINS)

# kept, so a second `make fuzz` recompiles nothing
.SECONDARY: $(FUZZ_SRCS:tests/fuzz/%.c=build/fuzz/obj/tests/fuzz/%.o)

build/fuzz/fuzz_%: build/fuzz/obj/tests/fuzz/fuzz_%.o $(LIB)
	$(CC) -fsanitize=fuzzer,address,undefined -o $@ $^ $(LIBS)

fuzz: fuzz-bins
	@tests/run_fuzz.sh $(FUZZ_SECONDS) $(FUZZ_BINS)

fuzz-smoke: fuzz-bins
	@tests/run_fuzz.sh $(FUZZ_SMOKE_SECONDS) $(FUZZ_BINS)

# kTLS self-test (tests/ktls/): fixed keys, no handshake; BoringSSL's libcrypto only, for
# the user-space end of its wire-format checks. `make test-ktls` boots Debian's 6.1
# kernel under QEMU (TCG) with it in an initramfs: this machine's kernel has no kTLS.
KTLS_SELFTEST := $(BUILD)/ktls_selftest
$(KTLS_SELFTEST): $(BUILD)/obj/tests/ktls/ktls_selftest.o
	$(CC) $(SANFLAGS) $(LDFLAGS) -o $@ $^ -L$(BSSL_PREFIX) -Wl,-rpath,$(BSSL_PREFIX) -lcrypto

# The relay itself in that VM (tests/ktls/relay.sh): handshakes move into the kernel,
# loadgen routes over them for each version and cipher, ktls_client drives the traps.
KTLS_CLIENT := $(BUILD)/ktls_client
$(KTLS_CLIENT): $(BUILD)/obj/tests/ktls/ktls_client.o
	$(CC) $(SANFLAGS) $(LDFLAGS) -o $@ $^ -L$(BSSL_PREFIX) -Wl,-rpath,$(BSSL_PREFIX) -lssl -lcrypto

# test-ktls: the self-test, then the relay on 6.1, then the relay on the newest kernel of
# trixie-backports (7.x: KeyUpdates are followed; skipped, exit 77, if it cannot be fetched).
KTLS_ARGS ?=
.PHONY: test-ktls test-ktls-relay
test-ktls: $(KTLS_SELFTEST) $(RELAY) $(KTLS_CLIENT) $(BUILD)/loadgen
	@tests/ktls/run.sh --selftest $(KTLS_SELFTEST) $(KTLS_ARGS)
	@tests/ktls/relay.sh --build $(BUILD) $(KTLS_ARGS)
	@tests/ktls/relay.sh --build $(BUILD) --kernel-suite trixie-backports --cpu max $(KTLS_ARGS) || [ $$? -eq 77 ]
test-ktls-relay: $(RELAY) $(KTLS_CLIENT) $(BUILD)/loadgen
	@tests/ktls/relay.sh --build $(BUILD) $(KTLS_ARGS)

deps:
	@tools/deps.sh

deps-test:
	@tools/deps.sh test

RUN_LISTEN ?= 127.0.0.1:8080
RUN_ARGS   ?=
run: deps
	@$(MAKE) --no-print-directory $(RELAY)
	@echo "pyrycode-relay: listening on ws://$(RUN_LISTEN) (/v1/server, /v1/client, /healthz); Ctrl-C stops it" >&2
	@tools/run-unprivileged.sh $(RELAY) --insecure-listen $(RUN_LISTEN) $(RUN_ARGS)

test: deps-test
	@tests/run_all.sh

# The soak of tests/e2e/test_soak.py, longer than make test's 20 s: a leak of descriptors
# or memory per connection shows over more sessions. gcc relay, 4 workers, plaintext.
SOAK_SECONDS ?= 600
.PHONY: soak
soak: deps-test
	@$(MAKE) --no-print-directory CC=gcc BUILD=build/gcc SAN= all
	@SOAK_SECONDS=$(SOAK_SECONDS) RELAY_BIN=$(CURDIR)/build/gcc/pyrycode-relay RELAY_WORKERS=4 RELAY_TLS=0 \
		/usr/bin/python3 -m pytest -q -s -p no:cacheprovider tests/e2e/test_soak.py

# Install layout (README "Install"): DESTDIR stages into another root (packaging,
# tests/checks/install.sh); paths written into the installed files are without it.
# The systemd units and scripts name the binary as $(BINDIR)/pyrycode-relay.
# SYSTEMD_UNIT_DIR=/etc/systemd/system also copies the units where systemd reads them.
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
MANDIR  ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share/pyrycode-relay
SYSTEMD_UNIT_DIR ?=
DEPLOY_FILES := $(sort $(shell find deploy -type f ! -name '*~'))
install: $(RELAY) $(MAN)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DATADIR)
	install -m 0755 $(RELAY) $(DESTDIR)$(BINDIR)/pyrycode-relay
	install -m 0644 $(MAN) $(DESTDIR)$(MANDIR)/man8/pyrycode-relay.8
	@set -e; for f in $(DEPLOY_FILES); do \
		dst=$(DESTDIR)$(DATADIR)/$${f#deploy/}; \
		install -d "$$(dirname "$$dst")"; \
		mode=0644; [ -x "$$f" ] && mode=0755; \
		sed 's|/usr/local/bin/pyrycode-relay|$(BINDIR)/pyrycode-relay|g' "$$f" > "$$dst.tmp"; \
		chmod $$mode "$$dst.tmp"; mv "$$dst.tmp" "$$dst"; \
		echo "install $$f -> $$dst"; \
	done
	@if [ -n "$(SYSTEMD_UNIT_DIR)" ]; then \
		install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR); \
		for u in $(DESTDIR)$(DATADIR)/systemd/*.service; do \
			install -m 0644 "$$u" $(DESTDIR)$(SYSTEMD_UNIT_DIR)/; echo "install $$u -> $(DESTDIR)$(SYSTEMD_UNIT_DIR)/"; \
		done; \
	fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/pyrycode-relay $(DESTDIR)$(MANDIR)/man8/pyrycode-relay.8
	rm -rf $(DESTDIR)$(DATADIR)
	@if [ -n "$(SYSTEMD_UNIT_DIR)" ]; then \
		for f in $(DEPLOY_FILES); do case $$f in deploy/systemd/*.service) \
			rm -f $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$(basename $$f);; esac; done; \
	fi

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# docs/img/dashboard.png: the Grafana dashboard's queries (deploy/grafana/) evaluated by
# a real Prometheus over a real one-minute run of the relay under tools/loadgen, drawn
# with matplotlib (tools/render-dashboard.py; Grafana is not in Debian). ~90 s.
.PHONY: dashboard-png
dashboard-png:
	@tools/deps.sh docs
	@$(MAKE) --no-print-directory CC=gcc BUILD=build/gcc SAN= all tools
	@/usr/bin/python3 tools/render-dashboard.py --relay-bin build/gcc/pyrycode-relay --loadgen build/gcc/loadgen \
		--out docs/img/dashboard.png

# Benchmarks (docs/benchmarks.md): relay on CPU 0, load generator on CPU 1, results in
# bench/results/<date>.json + PNGs. `make bench` takes about 10 minutes on 2 cores;
# `make bench-quick` is a < 1 minute smoke run. BENCH_ARGS="--only REGEX" picks scenarios.
BENCH_ARGS ?=
.PHONY: bench bench-quick deps-bench
bench: deps-bench
	@$(MAKE) --no-print-directory CC=gcc BUILD=build/gcc SAN= all
	@/usr/bin/python3 bench/run.py --build build/gcc $(BENCH_ARGS)

bench-quick: deps-bench
	@$(MAKE) --no-print-directory CC=gcc BUILD=build/gcc SAN= all
	@/usr/bin/python3 bench/run.py --build build/gcc --quick $(BENCH_ARGS)

deps-bench:
	@tools/deps.sh bench
