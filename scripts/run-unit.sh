#!/bin/sh
# Runs each unit-test binary; each prints "N passed, N failed". Sums them into one line.
set -u
passed=0; failed=0; status=0
for t in "$@"; do
	# bounded: a unit binary that hangs fails here rather than stalling CI
	out=$(timeout -k 10 300 "$t" 2>&1); rc=$?
	printf '%s\n' "$out"
	line=$(printf '%s\n' "$out" | grep -E '[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
	[ $rc -ne 124 ] || printf '%s: no end within 300 s\n' "$t"
	if [ -z "$line" ] || [ $rc -ne 0 ]; then status=1; fi
	p=$(printf "%s" "$line" | sed -E "s/^.*[^0-9]([0-9]+) passed.*/\1/"); f=$(printf "%s" "$line" | sed -E "s/^.* ([0-9]+) failed$/\1/")
	passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
	[ -z "$line" ] && failed=$((failed + 1))
done
echo "unit: $passed passed, $failed failed"
exit $status
