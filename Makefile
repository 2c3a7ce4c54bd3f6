# hookrelay - build, test, run. `make run` and `make test` do all set-up on Debian 12.

VERSION    := 0.1.0
PKGS       := libmicrohttpd libcurl sqlite3 jansson libcrypto
CC         ?= cc
WARN       := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
              -Wno-missing-field-initializers
BASE_CFLAGS = -std=c11 -D_GNU_SOURCE -DHOOKRELAY_VERSION='"$(VERSION)"' -Iserver -Idelivery \
              -Ibuild/gen $(WARN) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
OPT        ?= -O2 -g
LIBS        = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread
# User CFLAGS come last so they can override (hiredis style).
ALL_CFLAGS  = $(BASE_CFLAGS) $(OPT) $(CFLAGS)

SAN_FLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
TSAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=thread

LIB_SRC    := $(sort $(wildcard delivery/*.c) $(filter-out server/main.c,$(wildcard server/*.c)))
SCHEMA     := $(sort $(wildcard schema/*.sql))
# The list of migrations itself, rewritten only when it changes: a migration removed or
# renamed must rebuild the embedded schema too (its files' dates cannot say so).
SCHEMA_LIST := build/gen/schema.list
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))

OBJ        := $(LIB_SRC:%.c=build/obj/%.o) build/obj/gen/schema_sql.o
SAN_OBJ    := $(LIB_SRC:%.c=build/san/%.o) build/san/gen/schema_sql.o
TSAN_OBJ   := $(LIB_SRC:%.c=build/tsan/%.o) build/tsan/gen/schema_sql.o
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=build/unit/%)
SAN_UNIT   := $(UNIT_SRC:tests/unit/%.c=build/san-unit/%)

# libFuzzer targets (tests/fuzz): clang only. Each links just the sources it drives.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 300
FUZZ_FLAGS   := -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
                -fno-sanitize-recover=all
FUZZ_TARGETS := fuzz_ingest fuzz_matcher fuzz_url
FUZZ_BIN     := $(FUZZ_TARGETS:%=build/fuzz/%)

.PHONY: FORCE all deps run test unit integration sanitize valgrind tsan clean bench format fuzz fuzz-short soak
all: build/hookrelay

# A recipe that failed leaves no half-written target (an empty generated schema, say)
# for the next make to take as up to date.
.DELETE_ON_ERROR:

deps:
	@scripts/install-deps.sh

$(SCHEMA_LIST): FORCE
	@mkdir -p $(@D)
	@echo '$(SCHEMA)' | cmp -s - $@ || echo '$(SCHEMA)' > $@
FORCE:

build/gen/schema_sql.c: $(SCHEMA) $(SCHEMA_LIST) scripts/embed-schema.sh
	@mkdir -p $(@D)
	scripts/embed-schema.sh $(SCHEMA) > $@

build/obj/gen/%.o: build/gen/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@
build/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@
build/hookrelay: build/obj/server/main.o $(OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LIBS)

build/san/gen/%.o: build/gen/%.c
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) -MMD -MP -c $< -o $@
build/san/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) -MMD -MP -c $< -o $@
build/san/hookrelay: build/san/server/main.o $(SAN_OBJ)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) -o $@ $^ $(LIBS)

build/tsan/gen/%.o: build/gen/%.c
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(TSAN_FLAGS) -MMD -MP -c $< -o $@
build/tsan/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(TSAN_FLAGS) -MMD -MP -c $< -o $@
build/tsan/hookrelay: build/tsan/server/main.o $(TSAN_OBJ)
	$(CC) $(BASE_CFLAGS) $(TSAN_FLAGS) -o $@ $^ $(LIBS)

# An LD_PRELOAD shim the integration tests use to fail chosen SQLite steps or stall each
# fdatasync (a bad or slow disk).
FAULT_SHIM := build/faults/step_fault.so
$(FAULT_SHIM): tests/faults/step_fault.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -shared -fPIC -o $@ $< $(LIBS) -ldl

# The bench's load generator, which one integration test also drives (Node's HTTP client
# cannot publish fast enough to make the WAL long).
LOADGEN := build/tools/loadgen
$(LOADGEN): scripts/bench/loadgen.c
	@mkdir -p $(@D)
	$(CC) -std=c11 $(WARN) $(OPT) -o $@ $< -lcurl

build/unit/%: tests/unit/%.c tests/unit/check.h $(OBJ)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Itests/unit -o $@ $< $(OBJ) $(LIBS)
build/san-unit/%: tests/unit/%.c tests/unit/check.h $(SAN_OBJ)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) -Itests/unit -o $@ $< $(SAN_OBJ) $(LIBS)

build/fuzz/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(BASE_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
FUZZ_INGEST_SRC := server/ingest.c server/matcher.c server/util.c $(wildcard server/json_check.c)
build/fuzz/fuzz_ingest: $(FUZZ_INGEST_SRC:%.c=build/fuzz/obj/%.o)
build/fuzz/fuzz_matcher: build/fuzz/obj/server/matcher.o build/fuzz/obj/server/util.o
build/fuzz/fuzz_url: build/fuzz/obj/delivery/target.o
build/fuzz/%: tests/fuzz/%.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(BASE_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer -MMD -MP -o $@ $< \
		$(filter %.o,$^) $(LIBS)

# $(call fuzz_run,TARGET,SECONDS): new inputs go to build/fuzz/corpus/TARGET (kept
# between runs), the committed seeds in tests/fuzz/corpus/TARGET are only read, and
# crash-*/leak-*/timeout-* reproducers land in build/fuzz/artifacts. Fails on any finding.
define fuzz_run
	@mkdir -p build/fuzz/corpus/$(1) build/fuzz/artifacts build/fuzz/logs
	@if build/fuzz/$(1) -max_total_time=$(2) -timeout=10 -print_final_stats=1 \
		-artifact_prefix=build/fuzz/artifacts/$(1)- \
		build/fuzz/corpus/$(1) tests/fuzz/corpus/$(1) >build/fuzz/logs/$(1).log 2>&1; then \
		echo "$(1): $$(sed -n 's/^stat::number_of_executed_units: *//p' build/fuzz/logs/$(1).log) runs in $(2) s, $$(sed -n 's/^stat::average_exec_per_sec: *//p' build/fuzz/logs/$(1).log) exec/s, corpus $$(ls build/fuzz/corpus/$(1) | wc -l) files"; \
	else \
		tail -n 40 build/fuzz/logs/$(1).log; \
		echo "$(1): FAILED (log build/fuzz/logs/$(1).log); reproduce with build/fuzz/$(1) build/fuzz/artifacts/$(1)-<file>"; \
		exit 1; \
	fi
endef

fuzz: $(FUZZ_TARGETS:%=fuzz-run-%)
fuzz-short: $(FUZZ_TARGETS:%=fuzz-short-%)
fuzz-run-%: build/fuzz/%
	$(call fuzz_run,$*,$(FUZZ_SECONDS))
fuzz-short-%: build/fuzz/%
	$(call fuzz_run,$*,20)

# The targets that install first build in a sub-make after it, as test does: as
# prerequisites beside deps, `make -j` compiled before the headers were there.
run: deps
	@$(MAKE) --no-print-directory build/hookrelay
	@mkdir -p -m 700 data
	@echo "make run: --allow-private-targets is on so subscriptions may point at this machine"
	./build/hookrelay serve --db ./data/hookrelay.db --allow-private-targets $(ARGS)

unit: $(UNIT_BIN)
	@scripts/run-unit.sh $(UNIT_BIN)

tests/node_modules/.package-lock.json: tests/package.json tests/package-lock.json
	cd tests && npm ci --no-audit --no-fund --loglevel=error

# A test file that hangs fails after this long (ms) instead of holding CI for its 90
# minutes. Node 20 applies it to each file as a whole, not to each test; the whole of
# `make test` takes about 6.5 minutes.
TEST_TIMEOUT := --test-timeout=600000

integration: build/hookrelay $(FAULT_SHIM) $(LOADGEN) tests/node_modules/.package-lock.json
	HOOKRELAY_BIN=$(CURDIR)/build/hookrelay node --test --test-concurrency=2 $(TEST_TIMEOUT) tests/integration/

# The whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer.
sanitize: build/san/hookrelay $(SAN_UNIT) $(FAULT_SHIM) $(LOADGEN) tests/node_modules/.package-lock.json
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 scripts/run-unit.sh $(SAN_UNIT)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	HOOKRELAY_BIN=$(CURDIR)/build/san/hookrelay node --test --test-concurrency=2 $(TEST_TIMEOUT) tests/integration/

# Most of the integration tests with the relay under valgrind memcheck (about a minute;
# not in `make test`: the timing-heavy reliability and restart files would need longer
# waits). Fails on any memory error or definite leak; reports are in build/valgrind/.
VALGRIND_TESTS := $(addprefix tests/integration/,events.test.mjs delivery.test.mjs \
	errors.test.mjs subscriptions.test.mjs metrics.test.mjs ed25519.test.mjs \
	replay.test.mjs tls.test.mjs)
valgrind:
	@scripts/install-deps.sh valgrind
	@$(MAKE) --no-print-directory build/hookrelay $(FAULT_SHIM) tests/node_modules/.package-lock.json
	@rm -rf build/valgrind && mkdir -p build/valgrind
	VALGRIND_LOG_DIR=$(CURDIR)/build/valgrind HOOKRELAY_BIN=$(CURDIR)/scripts/valgrind-relay.sh \
	node --test --test-concurrency=2 $(TEST_TIMEOUT) $(VALGRIND_TESTS)
	@if [ -n "$$(find build/valgrind -name 'vg.*.log' -size +0)" ]; then \
		cat build/valgrind/vg.*.log; echo "valgrind: errors above"; exit 1; fi
	@echo "valgrind: clean ($$(ls build/valgrind | wc -l) relay runs)"

# The integration tests with the relay under ThreadSanitizer (about 3 minutes; not in
# `make test`). A report on the relay's stderr fails its test. Left out: the overload
# file, whose memory ceilings TSan's own memory passes. SQLite, libcurl and
# libmicrohttpd are not instrumented: races inside them go unseen.
TSAN_TESTS := $(filter-out %/reliability-overload.test.mjs,$(sort $(wildcard tests/integration/*.test.mjs)))
tsan: deps
	@$(MAKE) --no-print-directory build/tsan/hookrelay $(FAULT_SHIM) $(LOADGEN) tests/node_modules/.package-lock.json
	TSAN_OPTIONS=halt_on_error=0:second_deadlock_stack=1 \
	HOOKRELAY_TEST_START_TIMEOUT_MS=30000 HOOKRELAY_TEST_STOP_TIMEOUT_MS=30000 \
	HOOKRELAY_BIN=$(CURDIR)/build/tsan/hookrelay node --test --test-concurrency=2 $(TEST_TIMEOUT) $(TSAN_TESTS)

test: deps
	$(MAKE) unit
	$(MAKE) integration
	$(MAKE) sanitize
	$(MAKE) fuzz-short

# Issue #5 at length: the reliability tests with RELIABILITY_SOAK=1 (20 kills under load,
# bigger bursts; RELIABILITY_KILLS=N to change the kill count), one file at a time.
soak: deps
	@$(MAKE) --no-print-directory build/hookrelay $(FAULT_SHIM) $(LOADGEN) \
		tests/node_modules/.package-lock.json
	RELIABILITY_SOAK=1 HOOKRELAY_BIN=$(CURDIR)/build/hookrelay \
	node --test --test-concurrency=1 $(sort $(wildcard tests/integration/reliability*.test.mjs))

bench:
	@scripts/install-deps.sh wrk jq
	@$(MAKE) --no-print-directory build/hookrelay
	scripts/bench.sh

format:
	clang-format -i server/*.[ch] delivery/*.[ch] tests/unit/*.[ch]

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
