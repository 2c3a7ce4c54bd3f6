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

LIB_SRC    := $(sort $(wildcard delivery/*.c) $(filter-out server/main.c,$(wildcard server/*.c)))
SCHEMA     := $(sort $(wildcard schema/*.sql))
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))

OBJ        := $(LIB_SRC:%.c=build/obj/%.o) build/obj/gen/schema_sql.o
SAN_OBJ    := $(LIB_SRC:%.c=build/san/%.o) build/san/gen/schema_sql.o
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=build/unit/%)
SAN_UNIT   := $(UNIT_SRC:tests/unit/%.c=build/san-unit/%)

.PHONY: all deps run test unit integration sanitize clean bench format
all: build/hookrelay

deps:
	@scripts/install-deps.sh

build/gen/schema_sql.c: $(SCHEMA) scripts/embed-schema.sh
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

build/unit/%: tests/unit/%.c tests/unit/check.h $(OBJ)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Itests/unit -o $@ $< $(OBJ) $(LIBS)
build/san-unit/%: tests/unit/%.c tests/unit/check.h $(SAN_OBJ)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) -Itests/unit -o $@ $< $(SAN_OBJ) $(LIBS)

run: deps build/hookrelay
	@mkdir -p data
	@echo "make run: --allow-private-targets is on so subscriptions may point at this machine"
	./build/hookrelay serve --db ./data/hookrelay.db --allow-private-targets

unit: $(UNIT_BIN)
	@scripts/run-unit.sh $(UNIT_BIN)

tests/node_modules/.package-lock.json: tests/package.json
	cd tests && npm ci --no-audit --no-fund --loglevel=error

integration: build/hookrelay tests/node_modules/.package-lock.json
	HOOKRELAY_BIN=$(CURDIR)/build/hookrelay node --test --test-concurrency=2 tests/integration/

# The whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer.
sanitize: build/san/hookrelay $(SAN_UNIT) tests/node_modules/.package-lock.json
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 scripts/run-unit.sh $(SAN_UNIT)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	HOOKRELAY_BIN=$(CURDIR)/build/san/hookrelay node --test --test-concurrency=2 tests/integration/

test: deps
	$(MAKE) unit
	$(MAKE) integration
	$(MAKE) sanitize

bench: deps build/hookrelay
	scripts/bench.sh

format:
	clang-format -i server/*.[ch] delivery/*.[ch] tests/unit/*.[ch]

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
