#!/bin/sh
# valgrind-relay.sh - runs build/hookrelay under valgrind memcheck, for `make valgrind`:
# the integration tests start it in place of the relay (HOOKRELAY_BIN). Any memory error or
# definite/indirect leak makes the relay exit 99 (which fails the test that stops it) and
# is written to $VALGRIND_LOG_DIR/vg.<pid>.log.
dir=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
exec valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
	--errors-for-leak-kinds=definite,indirect \
	--log-file="${VALGRIND_LOG_DIR:-/tmp}/vg.%p.log" "$dir/build/hookrelay" "$@"
