# ferry - build, test, run, bench.  Quiet unless V=1.

CC       ?= cc
PKGS     := luajit libcares libssl libcrypto libpq
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null || echo -I/usr/include/luajit-2.1 -I/usr/include/postgresql)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lluajit-5.1 -lcares -lssl -lcrypto -lpq)
WERROR   ?=
OPT      ?= -O2
CFLAGS   += -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Wshadow -Wno-unused-parameter \
            -fno-strict-aliasing $(WERROR) $(PKG_CFLAGS) -MMD -MP
LDFLAGS  += -rdynamic
LDLIBS   += $(PKG_LIBS) -lev -lhttp_parser -lsqlite3 -ledit -lm -ldl

SRCS     := $(wildcard core/*.c)
OBJS     := $(SRCS:core/%.c=build/%.o)
ASAN_OBJS:= $(SRCS:core/%.c=build/asan/%.o)
PIC_OBJS := $(SRCS:core/%.c=build/pic/%.o)
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

BUSTED   := busted --lua=luajit
SPEC_DIRS ?= spec/unit spec/core spec/integration

# Debian packages: build, specs, and the upstream proxies the specs run.
DEPS     := build-essential pkg-config luajit2 libluajit2-5.1-dev libev-dev libhttp-parser-dev \
            libc-ares-dev libsqlite3-dev libssl-dev libedit-dev lua-cjson lua-busted lua-socket lua-check \
            cppcheck microsocks tinyproxy curl prometheus python3 sqlite3 wget git nodejs \
            python3-requests python3-socks stunnel4 openssl util-linux \
            clang libclang-rt-14-dev postgresql-15 libpq-dev dante-server
BENCH_DEPS := wrk nginx nginx-light squid-openssl mitmproxy haproxy tinyproxy dante-server microsocks stunnel4 openssl util-linux

ifeq ($(V),1)
Q :=
else
Q := @
endif

.PHONY: all deps bench-deps run test test-long asan lint bench bench-reverse bench-fleet chaos clean check-config fuzz \
        fuzz-smoke fuzz-build

all: bin/ferry

bin/ferry: $(OBJS)
	@mkdir -p bin
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

build/%.o: core/%.c
	@mkdir -p build
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

bin/ferry-asan: $(ASAN_OBJS)
	@mkdir -p bin
	@echo "  LD    $@"
	$(Q)$(CC) $(ASAN_FLAGS) $(LDFLAGS) -o $@ $(ASAN_OBJS) $(LDLIBS)

build/asan/%.o: core/%.c
	@mkdir -p build/asan
	@echo "  CC    $< (asan)"
	$(Q)$(CC) $(CFLAGS) $(ASAN_FLAGS) -O1 -c -o $@ $<

# The core as a shared object, for the FFI specs of spec/core.
build/libferry.so: $(PIC_OBJS)
	@echo "  LD    $@"
	$(Q)$(CC) -shared -o $@ $(PIC_OBJS) $(LDLIBS)

build/pic/%.o: core/%.c
	@mkdir -p build/pic
	@echo "  CC    $< (pic)"
	$(Q)$(CC) $(CFLAGS) -fPIC -c -o $@ $<

# Fuzzing (spec/fuzz): libFuzzer harnesses under ASan+UBSan, built with
# clang; the core files each harness needs are compiled again into
# build/fuzz/core with coverage instrumentation.  No event loop, no sockets.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 180
FUZZ_TARGETS ?= head chunked connect socks5 socks5_in socks4 config admin_json cache_policy
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Wno-unused-parameter \
                $(WERROR) $(PKG_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -MMD -MP \
                -DFUZZ_ROOT='"$(CURDIR)"'
FUZZ_CORE    = $(patsubst %,build/fuzz/core/%.o,$(1))
# The message parser, with its body reader once that has a file of its own.
FUZZ_HTTP    := http $(patsubst core/%.c,%,$(wildcard core/http_body.c))
FUZZ_CONN    := conn_http $(patsubst core/%.c,%,$(wildcard core/conn_head.c)) buf errors sticky ctl
FUZZ_LINK    = $(Q)$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^

build/fuzz/core/%.o: core/%.c
	@mkdir -p build/fuzz/core
	@echo "  CC    $< (fuzz)"
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

build/fuzz/%.o: spec/fuzz/%.c
	@mkdir -p build/fuzz
	@echo "  CC    $< (fuzz)"
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

build/fuzz/fuzz_head: build/fuzz/fuzz_head.o build/fuzz/shim_conn.o build/fuzz/ref_http.o \
                      $(call FUZZ_CORE,$(FUZZ_CONN) $(FUZZ_HTTP))
	@echo "  LD    $@"
	$(FUZZ_LINK) -lhttp_parser

build/fuzz/fuzz_chunked: build/fuzz/fuzz_chunked.o build/fuzz/ref_http.o \
                         $(call FUZZ_CORE,$(FUZZ_HTTP) buf)
	@echo "  LD    $@"
	$(FUZZ_LINK) -lhttp_parser

build/fuzz/fuzz_connect: build/fuzz/fuzz_connect.o build/fuzz/ref_http.o \
                         $(call FUZZ_CORE,up_http $(FUZZ_HTTP) buf)
	@echo "  LD    $@"
	$(FUZZ_LINK) -lhttp_parser

build/fuzz/fuzz_socks5: build/fuzz/fuzz_socks5.o $(call FUZZ_CORE,up_socks5 buf)
	@echo "  LD    $@"
	$(FUZZ_LINK)

build/fuzz/fuzz_socks5_in: build/fuzz/fuzz_socks5_in.o $(call FUZZ_CORE,inbound_socks5 buf ctl sticky)
	@echo "  LD    $@"
	$(FUZZ_LINK)

build/fuzz/fuzz_socks4: build/fuzz/fuzz_socks4.o $(call FUZZ_CORE,up_socks4 buf)
	@echo "  LD    $@"
	$(FUZZ_LINK)

build/fuzz/fuzz_config build/fuzz/fuzz_admin_json: build/fuzz/%: build/fuzz/%.o \
                                                   build/fuzz/fuzz_lua.o
	@echo "  LD    $@"
	$(FUZZ_LINK) $(PKG_LIBS) -lm -ldl

# The cache rules are pure functions: their own files and nothing else.
build/fuzz/fuzz_cache_policy: build/fuzz/fuzz_cache_policy.o \
                              $(call FUZZ_CORE,cache_policy cache_policy_cond cache_policy_date)
	@echo "  LD    $@"
	$(FUZZ_LINK) -lm

fuzz-build: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)

# Each target for FUZZ_SECONDS on a scratch copy of spec/fuzz/corpus/<target>;
# fails on any crash, sanitizer report, differential mismatch or timeout.
fuzz: deps fuzz-build
	@spec/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# The short run CI makes of every target.
fuzz-smoke: deps fuzz-build
	@spec/fuzz/run.sh 10 $(FUZZ_TARGETS)

-include $(OBJS:.o=.d) $(ASAN_OBJS:.o=.d) $(PIC_OBJS:.o=.d) $(wildcard build/fuzz/*.d build/fuzz/core/*.d)

# Install whatever of DEPS is missing (needs root or sudo).
deps:
	@missing=""; for p in $(DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "  DEPS $$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

bench-deps:
	@missing=""; for p in $(BENCH_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "  DEPS $$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: deps bin/ferry
	./bin/ferry -c examples/quickstart.lua

check-config: bin/ferry
	./bin/ferry check -c examples/quickstart.lua

# The suite under busted; the last line is "N passed, N failed".
test: deps bin/ferry build/libferry.so
	@FERRY_BIN=$(CURDIR)/bin/ferry spec/run.sh $(SPEC_DIRS)

# Specs tagged #long (100 MB bodies, slow large transfers): minutes, not seconds.
test-long: deps bin/ferry build/libferry.so
	@FERRY_BIN=$(CURDIR)/bin/ferry FERRY_SPEC_TAGS=long spec/run.sh spec/integration

asan: deps bin/ferry-asan build/libferry.so
	@FERRY_BIN=$(CURDIR)/bin/ferry-asan FERRY_ASAN=1 \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  spec/run.sh $(SPEC_DIRS)

lint: deps
	luacheck -q lua plugins spec examples etc
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --std=c11 --inline-suppr --suppress=missingIncludeSystem -D_GNU_SOURCE core

bench: deps bench-deps bin/ferry build/libferry.so
	spec/bench/run.sh
	spec/bench/https.sh
	spec/bench/reverse.sh

# The reverse-proxy tables alone: ferry against haproxy and nginx.
bench-reverse: deps bench-deps bin/ferry
	spec/bench/reverse.sh

# A fleet on a throwaway PostgreSQL (3 and 10 nodes): propagation of
# inventory changes and bans, database queries per node, PostgreSQL vs
# SQLite per CPU-second, the broker client's cached resolution.  A few
# minutes; FLEET_CHANGES (100), FLEET_SIZES ("3 10"), FLEET_RATE (1000).
bench-fleet: deps bench-deps bin/ferry build/libferry.so
	spec/bench/fleet.sh

# Four upstreams under load, two killed and one stopped: errors and counts
# (CHAOS_SECONDS, default 60; exits non-zero unless clean).
chaos: deps bench-deps bin/ferry
	spec/bench/chaos.sh

clean:
	rm -rf build bin spec/tmp
