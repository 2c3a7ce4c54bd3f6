#!/usr/bin/env bash
# scripts/bench.sh - `make bench`: hookrelay against bare ceilings measured in the same run.
#
# Prints one Markdown table (measurement | figure | ceiling | ratio):
#   1a bare libmicrohttpd + wrk, 1b raw SQLite group commit, 1c bare libcurl multi loop;
#   2 relay single-event ingest, 3 batch ingest, 4 delivery of a backlog,
#   5 end-to-end latency at a fixed 1,000 events/s, 6 relay peak RSS (VmHWM),
#   4c delivery to 50 https receivers.
# Loopback only; everything it starts it stops (trap on EXIT); every wait is bounded.
# Programs and scripts live in scripts/bench/ (see the comment at the top of each).
# Knobs (env): BENCH_DUR (wrk seconds, default 10 as the issue asks), BENCH_BACKLOG_EVENTS (default 100000),
# BENCH_BUDGET (seconds the whole run may take, default 180), BENCH_KEEP=1 keeps the run dir,
# BENCH_ONLY="ingest delivery wide idle e2e big tls" (the relay sections to run; the
# ceilings always run; wide is row 4b, idle 4e, tls rows 4c and 4d).
# BENCH_ONLY=stored runs row 7 (ingest with 5M events already stored, BENCH_STORED_EVENTS),
# which takes ~4 minutes more and so is not in the default set.
# BENCH_RELAY=PATH benches another build of the relay (A/B against a saved binary).
# BENCH_SUB_FIELDS=',"max_in_flight":48' adds fields to every subscription the bench makes.
# BENCH_PERF=FILE records a perf profile (perf record -g) of the relay while row 4 drains;
# BENCH_PERF_OPT replaces -g (say --call-graph dwarf: Debian's libcurl and libsqlite3 have
# no frame pointers, so -g loses their callers).
set -eu

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/build/bench
SRC=$ROOT/scripts/bench
RELAY=$(realpath "${BENCH_RELAY:-$ROOT/build/hookrelay}") # the symlink below needs it absolute
DUR=${BENCH_DUR:-10}
BACKLOG_EVENTS=${BENCH_BACKLOG_EVENTS:-100000}
BUDGET=${BENCH_BUDGET:-180}
ONLY=${BENCH_ONLY:-ingest delivery wide idle e2e big tls}
STORED_EVENTS=${BENCH_STORED_EVENTS:-5000000}
BIG_EVENTS=334000 # x 3 subscriptions = 1,002,000 deliveries (334 batch calls of 1,000)

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log() { printf '[bench %3ds] %s\n' "$SECONDS" "$*" >&2; }

# ---- tools ---------------------------------------------------------------------------
"$ROOT/scripts/install-deps.sh" wrk jq # (make bench has; BENCH_RELAY runs may not have)
# Loopback only: a proxy in the environment would take curl's requests (libcurl proxies
# even 127.0.0.1) to another host.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
mkdir -p "$BIN"
CFLAGS_B="-std=c11 -O2 -Wall -Wextra -Werror"
# shellcheck disable=SC2086,SC2046 # word splitting of flags is intended
build() { # name pkg
	cc $CFLAGS_B $(pkg-config --cflags "$2") -o "$BIN/$1" "$SRC/$1.c" \
		$(pkg-config --libs "$2") -lpthread
}
build bare_mhd libmicrohttpd
build bare_sqlite sqlite3
build bare_curl libcurl
build loadgen libcurl
build fill_store sqlite3

RUN=$(mktemp -d "$BIN/run.XXXXXX")
LOGS=$BIN/logs # relay stderr of the last run, kept for post-mortems
rm -rf "$LOGS" && mkdir -p "$LOGS"
PIDS=""

cleanup() {
	set +e
	for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
	for p in $PIDS; do
		for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	[ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop PID [name]: SIGTERM, up to 15 s, then SIGKILL. Sets STOP_NOTE when it was not clean.
STOP_NOTE=""
stop() {
	local p=$1 name=${2:-process} rc=0
	STOP_NOTE=""
	kill -TERM "$p" 2>/dev/null || true
	for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$p" 2>/dev/null; then
		STOP_NOTE="$name did not exit within 15 s of SIGTERM (killed)"
		kill -KILL "$p" 2>/dev/null || true
	fi
	wait "$p" 2>/dev/null || rc=$?
	[ -z "$STOP_NOTE" ] && [ "$rc" -ne 0 ] && STOP_NOTE="$name exited with status $rc after SIGTERM"
	PIDS=$(echo " $PIDS " | sed "s/ $p / /")
	[ -z "$STOP_NOTE" ] || log "$STOP_NOTE"
}

# wait_file FILE REGEX TIMEOUT_S: until a line of FILE matches (bounded).
wait_file() {
	for _ in $(seq 1 $(($3 * 10))); do
		grep -qE "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# start_mhd NAME ARGS...: a bare_mhd in the background; sets MHD_PID, MHD_PORT.
start_mhd() {
	local name=$1
	shift
	"$BIN/bare_mhd" --max-seconds 900 "$@" >"$RUN/$name.port" 2>"$RUN/$name.err" &
	MHD_PID=$!
	PIDS="$PIDS $MHD_PID"
	wait_file "$RUN/$name.port" '^[0-9]+$' 5 || { echo "bare_mhd $name did not start" >&2; exit 1; }
	MHD_PORT=$(head -1 "$RUN/$name.port")
	RECV="$RECV $MHD_PID"
}
RECV="" # receivers of the current section
stop_receivers() {
	local p
	for p in $RECV; do stop "$p" bare_mhd; done
	RECV=""
}

# kv KEY LINE: value of KEY=value in a line of key=value words.
kv() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }
fmt_int() { # 1234567.8 -> 1,234,568
	awk -v x="$1" 'BEGIN { s = sprintf("%d", x + 0.5); o = ""
		while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
		print s o }'
}
us() { awk -v x="$1" 'BEGIN { if (x >= 1000) printf "%.2f ms", x / 1000; else printf "%d µs", x }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "—" }'; }

ROWS=$RUN/rows.md
NOTES=$RUN/notes.txt
: >"$ROWS"
: >"$NOTES"
row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >>"$ROWS"; log "row: $1 = $2"; }
note() { printf -- '- %s\n' "$*" >>"$NOTES"; log "note: $*"; }

EVENT=$SRC/event.json
# the same event with a timestamp slot the load generator overwrites (row 5)
sed 's/"data":{/"data":{"sent_at_ns":1000000000000000000,/' "$EVENT" >"$RUN/event_stamp.json"
# batch bodies: N copies of the event in a JSON array
batch_body() { # N FILE
	awk -v n="$1" 'NR == 1 { e = $0 } END { printf "["; for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? "," : ""), e; printf "]" }' "$EVENT" >"$2"
}
batch_body 100 "$RUN/batch100.json"
batch_body 1000 "$RUN/batch1000.json"

# wrk_run LUA URL EXTRA_ARGS...: prints the WRK summary line
wrk_run() {
	local lua=$1 url=$2 conns=$3
	shift 3
	timeout $((DUR + 30)) wrk -t2 -c"$conns" -d"${DUR}s" --timeout 10s -s "$SRC/$lua" "$url" -- "$@" \
		| grep '^WRK ' || true
}

# wrk_rate WRKLINE [PER_REQUEST]: answered requests (x PER_REQUEST) per second of a WRK
# summary line, counting only the 2xx: a 503 "too many writes queued" stored nothing
# (a note says how many there were; the latencies still include them)
wrk_rate() {
	local bad
	bad=$(kv non2xx "$1")
	[ "${bad:-0}" = 0 ] || note "$bad of $(kv requests "$1") requests to the relay were answered >= 400 and are not counted in its rate"
	awk -v r="$(kv requests "$1")" -v b="${bad:-0}" -v d="$(kv duration_us "$1")" -v k="${2:-1}" \
		'BEGIN { print k * (r - b) / (d / 1e6) }'
}

# cpu_ticks PID: user + system clock ticks the process has used (proc(5) fields 14, 15)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# pids_ticks PID...: cpu_ticks summed
pids_ticks() {
	local p t=0
	for p in "$@"; do t=$((t + $(cpu_ticks "$p"))); done
	echo "$t"
}
# machine_ticks: "busy all" clock ticks of every CPU so far (/proc/stat's cpu line; idle
# and iowait are not busy)
machine_ticks() { awk '$1 == "cpu" { all = 0; for (i = 2; i <= 9; i++) all += $i; print all - $5 - $6, all; exit }' /proc/stat; }
# machine_busy BEFORE AFTER: the share of the machine's CPU time that was busy between them
machine_busy() {
	awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
		if (y[2] > x[2]) printf "%.0f%%", 100 * (y[1] - x[1]) / (y[2] - x[2]); else print "?" }'
}
# per_item_us TICKS COUNT: clock ticks as µs of CPU per item
per_item_us() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (n > 0 ? t / hz * 1e6 / n : 0) }'; }

# ---- 1. bare ceilings ------------------------------------------------------------------
log "1a: bare libmicrohttpd + wrk"
start_mhd sink --status 202 --threads 2
W=$(wrk_run post.lua "http://127.0.0.1:$MHD_PORT/v1/events" 64 "$EVENT")
[ -n "$W" ] || { echo "wrk against bare_mhd failed" >&2; exit 1; }
CEIL_HTTP=$(wrk_rate "$W")
row "1a bare libmicrohttpd, wrk POST 617 B, 64 conns, 2 threads, ${DUR} s" \
	"$(fmt_int "$CEIL_HTTP") req/s, p50 $(us "$(kv p50_us "$W")"), p99 $(us "$(kv p99_us "$W")")" "—" "—"
stop "$MHD_PID" bare_mhd

log "1b: raw SQLite"
S=$("$BIN/bare_sqlite" --db "$RUN/bare.db" --body "$EVENT" --seconds "$DUR" --events 1000000)
CEIL_SQL=$(kv events_per_s "$S")
row "1b raw SQLite: event + 3 delivery rows, WAL, synchronous=FULL, 100/tx" "$(fmt_int "$CEIL_SQL") events/s" "—" "—"
rm -f "$RUN"/bare.db*

log "1c: bare libcurl multi"
start_mhd curlrecv --status 200 --threads 2
C_RECV0=$(cpu_ticks "$MHD_PID") C_MACHINE0=$(machine_ticks)
C=$("$BIN/bare_curl" --url "http://127.0.0.1:$MHD_PORT/hook" --body "$EVENT" --inflight 128 \
	--seconds "$DUR" --requests 2000000)
CEIL_CURL=$(kv requests_per_s "$C")
row "1c bare libcurl multi, 128 in flight, keep-alive, to bare MHD (200)" "$(fmt_int "$CEIL_CURL") req/s" "—" "—"
note "row 1c: bare_curl used $(awk -v c="$(kv cpu_us "$C")" -v n="$(kv ok "$C")" 'BEGIN { printf "%.0f", (n > 0 ? c / n : 0) }') µs of CPU per request, its receiver $(per_item_us "$(($(cpu_ticks "$MHD_PID") - C_RECV0))" "$(kv ok "$C")") µs; the machine was $(machine_busy "$C_MACHINE0" "$(machine_ticks)") busy"
stop "$MHD_PID" bare_mhd

# ---- relay helpers --------------------------------------------------------------------
# The relay runs through a symlink (so its process name is relay-under-test) and its db is
# relay.db: on a shared machine a `pkill hookrelay` meant for another run must not stop it.
RELAY_LINK=$RUN/relay-under-test
ln -s "$RELAY" "$RELAY_LINK"
# start_relay NAME [FLAGS]: fresh db; sets RELAY_PID, API.
start_relay() { # NAME [extra flags...]
	local name=$1
	shift
	mkdir -p "$RUN/$name"
	"$RELAY_LINK" serve --listen 127.0.0.1:0 --db "$RUN/$name/relay.db" --allow-private-targets "$@" \
		>"$RUN/$name/stdout" 2>"$LOGS/$name.stderr" &
	RELAY_PID=$!
	PIDS="$PIDS $RELAY_PID"
	if ! wait_file "$RUN/$name/stdout" '^hookrelay listening on http://' 10; then
		note "relay ($name) did not print its listening line within 10 s; stderr: $(tail -c 300 "$LOGS/$name.stderr" | tr '\n' ' ')"
		return 1
	fi
	API=$(sed -n 's/^hookrelay listening on \(http:[^ ]*\).*/\1/p' "$RUN/$name/stdout" | head -1)
	API=${API%/}
	log "relay $name pid $RELAY_PID at $API"
}
alive() { kill -0 "$RELAY_PID" 2>/dev/null; }
RELAY_PID=""
stop_relay_if_running() {
	case " $PIDS " in *" $RELAY_PID "*) [ -n "$RELAY_PID" ] && stop "$RELAY_PID" relay ;; esac
	RELAY_PID=""
}

# api METHOD PATH [BODY]: sets HTTP_STATUS and HTTP_BODY
api() {
	rm -f "$RUN/api.body"
	HTTP_STATUS=$(curl -sS -m 30 -o "$RUN/api.body" -w '%{http_code}' -X "$1" \
		-H 'Content-Type: application/json' ${3:+--data-binary "$3"} "$API$2" 2>"$RUN/api.err") || true
	HTTP_BODY=$(cat "$RUN/api.body" 2>/dev/null || true)
	[ "$HTTP_STATUS" != 000 ] || HTTP_BODY="(no answer: $(tr '\n' ' ' <"$RUN/api.err"))"
}

# subscribe URL...: one subscription per URL for order.*; sets SUBS
subscribe() {
	SUBS=""
	local u id
	for u in "$@"; do
		api POST /v1/subscriptions "{\"url\":\"$u\",\"event_types\":[\"order.*\"]${SUB_FIELDS-${BENCH_SUB_FIELDS:-}}}"
		id=$(printf '%s' "$HTTP_BODY" | jq -r '.id // empty' 2>/dev/null || true)
		if [ "$HTTP_STATUS" != 201 ] || [ -z "$id" ]; then
			note "POST /v1/subscriptions answered $HTTP_STATUS: $(printf '%s' "$HTTP_BODY" | head -c 200)"
			return 1
		fi
		SUBS="$SUBS $id"
	done
}
# start_held_relay PREFIX NAME: three receivers that hold every request (ports in HELD1..3),
# a relay NAME with --delivery-timeout 300s so held requests do not time out (and any
# further relay flags), and one subscription per receiver. The sender stalls at the
# subscriptions' max_in_flight.
start_held_relay() {
	local prefix=$1 name=$2
	shift 2
	start_mhd "${prefix}1" --status 200 --threads 1 --hold; HELD1=$MHD_PORT
	start_mhd "${prefix}2" --status 200 --threads 1 --hold; HELD2=$MHD_PORT
	start_mhd "${prefix}3" --status 200 --threads 1 --hold; HELD3=$MHD_PORT
	start_relay "$name" --delivery-timeout 300s "$@" || return 1
	subscribe "http://127.0.0.1:$HELD1/hook" "http://127.0.0.1:$HELD2/hook" "http://127.0.0.1:$HELD3/hook"
}
set_enabled() { # true|false
	local id
	for id in $SUBS; do
		api PATCH "/v1/subscriptions/$id" "{\"enabled\": $1}"
		if [ "$HTTP_STATUS" != 200 ]; then
			note "PATCH /v1/subscriptions/$id enabled=$1 answered $HTTP_STATUS: $(printf '%s' "$HTTP_BODY" | head -c 200)"
			return 1
		fi
	done
}
# wal_syncs: the relay's fdatasyncs of its WAL so far, from /metrics: how many, how many
# took over 25 ms and over 100 ms, and the bucket bound the slowest fell under. Every
# durable publish waits for one, so a stalling disk shows in the ingest tail here.
wal_syncs() {
	curl -s -m 10 "$API/metrics" | awk -F'[{}" ]+' '
		/^hookrelay_wal_sync_duration_seconds_bucket/ { le[++n] = $3; c[n] = $4 }
		/^hookrelay_wal_sync_duration_seconds_count/ { total = $2 }
		END {
			if (!n) { print "(no hookrelay_wal_sync_duration_seconds in /metrics)"; exit }
			if (!total) { print "no fdatasyncs of the WAL"; exit }
			for (i = 1; i <= n; i++) {
				if (le[i] == "0.025") o25 = total - c[i]
				if (le[i] == "0.1") o100 = total - c[i]
				if (slowest == "" && c[i] == total) slowest = le[i]
			}
			printf "%d fdatasyncs of the WAL, %d over 25 ms, %d over 100 ms, the slowest <= %s s",
				total, o25, o100, slowest
		}'
}
# vmhwm PID: peak RSS in MiB. Bash alone (no awk): the drain loops call it 4 times a
# second, and every process they start takes CPU from the relay they are measuring.
vmhwm() {
	local k v _
	while read -r k v _; do
		[ "$k" = VmHWM: ] && { echo $(((v + 512) / 1024)); return; }
	done 2>/dev/null <"/proc/$1/status"
	echo "? (process gone)"
}
# thread_ticks PID: "name=ticks" for each of its threads, names with spaces dropped (the
# comm is field 2 in parentheses; the relay names its threads hr-writer, hr-dispatch, ...)
thread_ticks() {
	local f
	for f in /proc/"$1"/task/*/stat; do
		sed -n 's/^[0-9]* (\([^ )]*\)) [A-Z] /\1 /p' "$f" 2>/dev/null || true
	done | awk '{ t[$1] += $12 + $13 } END { for (n in t) printf "%s=%d ", n, t[n] }'
}
# thread_cpu_per BEFORE AFTER COUNT: "name N µs" per item for each thread that used CPU
thread_cpu_per() {
	awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN {
		k = split(a, x, " "); for (i = 1; i <= k; i++) { split(x[i], p, "="); t0[p[1]] = p[2] }
		k = split(b, x, " "); out = ""
		for (i = 1; i <= k; i++) {
			split(x[i], p, "="); d = p[2] - t0[p[1]]
			if (d > 0 && n > 0) out = out sprintf("%s%s %.0f", (out ? ", " : ""), p[1], d / hz * 1e6 / n)
		}
		print out }'
}
vmrss() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
# recv_count PORT: a bare_mhd's GET /count, over bash's own /dev/tcp. The drain loops
# ask 3 receivers 4 times a second; with a curl for each (7-11 ms of CPU apiece, most
# of it start-up), the loop's processes took ~130 ms of CPU a second during row 4
# (perf sched): CPU the relay and its receivers, on the same 2 CPUs, did not get.
recv_get() { # PATH PORT: the number a bare_mhd answers on GET PATH, or 0
	local fd line n=0
	{ exec {fd}<>"/dev/tcp/127.0.0.1/$2"; } 2>/dev/null || { echo 0; return; }
	printf 'GET /%s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&"$fd"
	while IFS= read -r -t 5 -u "$fd" line; do # the headers, up to the empty line
		[ "${line%$'\r'}" = "" ] && break
	done
	IFS= read -r -t 5 -u "$fd" line && [[ $line =~ ^[0-9]+ ]] && n=${BASH_REMATCH[0]}
	exec {fd}>&-
	echo "$n"
}
recv_count() { recv_get count "$1"; }
recv_last() { # ELSE ports...: when the last request reached any of them, unix seconds
	local p t max=0 else=$1
	shift
	for p in "$@"; do
		t=$(recv_get last "$p")
		[ "${t:-0}" -gt "$max" ] && max=$t
	done
	ns_or "$max" "$else"
}
ns_or() { # NS ELSE: unix ns NS in seconds, or ELSE where NS is not a time (0, empty)
	awk -v ns="$1" -v e="$2" 'BEGIN { if (ns + 0 > 0) printf "%.3f", ns / 1e9; else print e }'
}
recv_sum() { # ports...: sum of /count
	local s=0 p c
	for p in "$@"; do
		c=$(recv_count "$p")
		s=$((s + ${c:-0}))
	done
	echo "$s"
}
pending_empty() { # 0 when GET /v1/deliveries?status=pending&limit=1 lists nothing
	api GET '/v1/deliveries?status=pending&limit=1'
	[ "$HTTP_STATUS" = 200 ] && [ "$(printf '%s' "$HTTP_BODY" | jq '.data | length' 2>/dev/null)" = 0 ]
}
relay_gone() { # NAME: note a dead relay
	note "relay ($1) died (pid $RELAY_PID); last stderr: $(tail -c 400 "$LOGS/$1.stderr" | tr '\n' ' ')"
}

skip_relay_rows() {
	row "2 hookrelay POST /v1/events" "skipped: $1" "—" "—"
	row "3 hookrelay POST /v1/events/batch" "skipped: $1" "—" "—"
	row "4 hookrelay delivery of a backlog" "skipped: $1" "—" "—"
	row "5 end-to-end latency at 1,000 events/s" "skipped: $1" "—" "—"
	row "6 relay peak RSS" "skipped: $1" "—" "—"
}

# ---- 2 + 3. ingest ---------------------------------------------------------------------
section_ingest() {
	local r1 r2 r3 W n
	start_mhd i1 --status 200 --threads 1; r1=$MHD_PORT
	start_mhd i2 --status 200 --threads 1; r2=$MHD_PORT
	start_mhd i3 --status 200 --threads 1; r3=$MHD_PORT
	start_relay ingest || return 1
	subscribe "http://127.0.0.1:$r1/hook" "http://127.0.0.1:$r2/hook" "http://127.0.0.1:$r3/hook" || return 1
	api POST /v1/events "$(cat "$EVENT")"
	if [ "$HTTP_STATUS" != 202 ] || [ "$(printf '%s' "$HTTP_BODY" | jq -r .deliveries 2>/dev/null)" != 3 ]; then
		note "probe POST /v1/events answered $HTTP_STATUS $(printf '%s' "$HTTP_BODY" | head -c 200) (expected 202 with deliveries 3)"
	fi

	log "2: relay single-event ingest"
	W=$(wrk_run post.lua "$API/v1/events" 64 "$EVENT")
	if [ -z "$W" ] || ! alive; then
		alive || relay_gone ingest
		row "2 hookrelay POST /v1/events, 3 matching subs, 64 conns, ${DUR} s" "failed (see notes)" "—" "—"
		return 1
	fi
	n=$(wrk_rate "$W")
	row "2 hookrelay POST /v1/events, 3 matching subs, 64 conns, ${DUR} s" \
		"$(fmt_int "$n") events/s, p50 $(us "$(kv p50_us "$W")"), p99 $(us "$(kv p99_us "$W")")" \
		"$(fmt_int "$CEIL_HTTP") req/s (1a)" "$(pct "$n" "$CEIL_HTTP")"
	[ "$(kv timeout "$W")$(kv connect "$W")$(kv read "$W")" = 000 ] ||
		note "row 2: wrk socket errors connect=$(kv connect "$W") read=$(kv read "$W") timeout=$(kv timeout "$W")"

	log "3: relay batch ingest"
	W=$(wrk_run batch.lua "$API/v1/events/batch" 16 "$EVENT" 100)
	if [ -z "$W" ] || ! alive; then
		alive || relay_gone ingest
		row "3 hookrelay POST /v1/events/batch" "failed (see notes)" "—" "—"
		return 1
	fi
	n=$(wrk_rate "$W" 100)
	BATCH_RATE=$n
	row "3 hookrelay POST /v1/events/batch, 100 events/call, 16 conns, ${DUR} s" \
		"$(fmt_int "$n") events/s (call p50 $(us "$(kv p50_us "$W")"), p99 $(us "$(kv p99_us "$W")"))" \
		"$(fmt_int "$CEIL_SQL") events/s (1b)" "$(pct "$n" "$CEIL_SQL")"
	note "rows 2-3: the relay delivered $(fmt_int "$(recv_sum "$r1" "$r2" "$r3")") webhooks to the receivers while ingesting (deliveries run beside ingest); peak RSS $(vmhwm "$RELAY_PID") MiB"
	note "rows 2-3: $(wal_syncs)"

	stop "$RELAY_PID" relay
	[ -z "$STOP_NOTE" ] || note "ingest relay: $STOP_NOTE"
	stop_receivers

	# 2b: the ingest path alone. Receivers that hold every request stall the sender at
	# the subscriptions' max_in_flight, so no deliveries share the two cores with ingest.
	start_held_relay h ingest-held || return 1
	r1=$HELD1 r2=$HELD2 r3=$HELD3
	log "2b: relay single-event ingest, receivers holding"
	local threads0
	threads0=$(thread_ticks "$RELAY_PID")
	W=$(wrk_run post.lua "$API/v1/events" 64 "$EVENT")
	if [ -n "$W" ]; then
		n=$(wrk_rate "$W")
		row "2b the same, receivers holding every request (no deliveries beside ingest)" \
			"$(fmt_int "$n") events/s, p50 $(us "$(kv p50_us "$W")"), p99 $(us "$(kv p99_us "$W")")" \
			"$(fmt_int "$CEIL_HTTP") req/s (1a)" "$(pct "$n" "$CEIL_HTTP")"
		# Per event, the figure that separates two builds when the rate moves with the VM.
		note "row 2b: µs of CPU per event by thread: $(thread_cpu_per "$threads0" "$(thread_ticks "$RELAY_PID")" "$(kv requests "$W")")"
		note "row 2b: $(wal_syncs)"
	fi

	# 3c, 3d: a relay serving many tenants holds subscriptions of many other types; an
	# event must cost what its own matches cost, not a check of every subscription. Batch
	# ingest with the receivers holding (so that no deliveries share the cores), before
	# and after OTHER_SUBS more subscriptions; 5 s runs.
	log "3c: relay batch ingest, receivers holding"
	threads0=$(thread_ticks "$RELAY_PID")
	W=$(DUR=5 wrk_run batch.lua "$API/v1/events/batch" 16 "$EVENT" 100)
	if [ -z "$W" ] || ! alive; then
		alive || relay_gone ingest-held
		row "3c hookrelay POST /v1/events/batch, receivers holding" "failed (see notes)" "—" "—"
		return 1
	fi
	local before
	before=$(wrk_rate "$W" 100)
	row "3c hookrelay POST /v1/events/batch, 100 events/call, 16 conns, 5 s, receivers holding" \
		"$(fmt_int "$before") events/s (call p50 $(us "$(kv p50_us "$W")"), p99 $(us "$(kv p99_us "$W")"))" \
		"$(fmt_int "$CEIL_SQL") events/s (1b)" "$(pct "$before" "$CEIL_SQL")"
	# The writer thread near one whole CPU here says batch ingest is bound by SQLite's
	# work per event, not by HTTP.
	note "row 3c: µs of CPU per event by thread: $(thread_cpu_per "$threads0" "$(thread_ticks "$RELAY_PID")" "$(($(kv requests "$W") * 100))")"
	log "3d: $(fmt_int "$OTHER_SUBS") more subscriptions of other types, then 3c again"
	subscribe_others "$OTHER_SUBS" "http://127.0.0.1:$r1" || return 1
	W=$(DUR=5 wrk_run batch.lua "$API/v1/events/batch" 16 "$EVENT" 100)
	if [ -z "$W" ] || ! alive; then
		alive || relay_gone ingest-held
		row "3d the same, $(fmt_int "$OTHER_SUBS") more subscriptions of other types" "failed (see notes)" "—" "—"
		return 1
	fi
	n=$(wrk_rate "$W" 100)
	row "3d the same, with $(fmt_int "$OTHER_SUBS") more subscriptions of other types (tenantN.order.*, tenantN.invoice.#)" \
		"$(fmt_int "$n") events/s (call p50 $(us "$(kv p50_us "$W")"), p99 $(us "$(kv p99_us "$W")"))" \
		"$(fmt_int "$before") events/s (3c)" "$(pct "$n" "$before")"
	stop "$RELAY_PID" relay
	stop_receivers
	return 0
}

# create_subscriptions N WHAT: creates the subscriptions whose JSON bodies come one per
# line on stdin, with one curl (64 at once, so the writer commits them in groups): a
# curl (and jq) per subscription took ~65 ms, 40 s for 600. Fails unless all N answer 201.
create_subscriptions() {
	local made
	# "next" between requests: one after the last is a request with no URL
	awk -v api="$API" 'NR > 1 { print "next" }
		{ gsub(/["\\]/, "\\\\&")
		  printf "url = \"%s/v1/subscriptions\"\nrequest = \"POST\"\n", api
		  printf "header = \"Content-Type: application/json\"\ndata-binary = \"%s\"\n", $0
		  printf "output = \"/dev/null\"\nwrite-out = \"%%{http_code}\\n\"\n" }' >"$RUN/subs.curl"
	made=$(curl -sS --no-progress-meter -m 120 --parallel --parallel-max 64 --config "$RUN/subs.curl" 2>"$RUN/api.err" | grep -c '^201$' || true)
	[ "$made" = "$1" ] || { note "$made of $1 $2 created: $(head -c 200 "$RUN/api.err")"; return 1; }
}

# subscribe_others N RECEIVER_URL: N subscriptions to types no bench event has.
OTHER_SUBS=10000
subscribe_others() {
	local i
	for i in $(seq 1 "$1"); do
		printf '{"url":"%s/t%s","event_types":["tenant%s.order.*","tenant%s.invoice.#"]}\n' "$2" "$i" "$i" "$i"
	done | create_subscriptions "$1" "subscriptions of other types"
}

# fill_backlog EVENTS BODYFILE PER_CALL: batch-ingest into $API; sets FILL_OK, FILL_S
fill_backlog() {
	local calls=$(($1 / $3)) out t0
	t0=$SECONDS
	out=$("$BIN/loadgen" --url "$API/v1/events/batch" --body "$2" --requests "$calls" \
		--inflight 4 --seconds 120)
	FILL_S=$(kv seconds "$out") # loadgen's own clock: bash's SECONDS counts whole seconds
	[ -n "$FILL_S" ] || FILL_S=$((SECONDS - t0))
	FILL_OK=$(($(kv ok "$out") * $3))
	[ "$(kv ok "$out")" = "$calls" ] || note "backlog fill: $out"
	log "filled $FILL_OK events in ${FILL_S} s: $out"
}

# ---- 4 + 6. delivery of a backlog, memory ----------------------------------------------
# The backlog: disabled subscriptions get no delivery rows (the matcher only holds enabled
# ones), so events are ingested with the subscriptions enabled while the receivers hold
# every request unanswered (bare_mhd --hold): the relay's sender stalls on at most
# --max-in-flight requests and the rest stay pending in the db. Then the subscriptions are
# disabled (they keep their pending deliveries), the receivers release what they hold,
# and the clock starts when the subscriptions are enabled again.
release() { # ports...
	local p
	for p in "$@"; do curl -s -m 5 -o /dev/null "http://127.0.0.1:$p/release" || true; done
}
wait_stable() { # ports...: until the receivers' total stops moving (1 s steady, max 15 s)
	local prev=-1 cur steady=0
	for _ in $(seq 1 60); do
		cur=$(recv_sum "$@")
		if [ "$cur" = "$prev" ]; then steady=$((steady + 1)); else steady=0; fi
		[ "$steady" -ge 4 ] && return 0
		prev=$cur
		sleep 0.25
	done
	return 1
}

# section_delivery [ROW CAPS SUB_FIELDS EVENTS OTHERS RELAY_FLAGS]: row 4 by default (subscriptions at their
# default max_in_flight, BACKLOG_EVENTS x 3); row 4b gives each subscription SUB_FIELDS
# and a backlog of EVENTS x 3.
section_delivery() {
	local id=${1:-4} caps=${2:-default caps} events=${4:-$BACKLOG_EVENTS} others=${5:-0} rflags=${6:-}
	local r1 r2 r3 expect got base t0 t_end t_done el n hwm_before probe left ticks0 recv0 recv1 machine0 machine1
	[ $# -lt 3 ] || local SUB_FIELDS=$3
	# shellcheck disable=SC2086 # rflags: flags, split
	if [ "$id" = 4 ]; then start_held_relay d delivery || return 1; else start_held_relay w "delivery$id" $rflags || return 1; fi
	r1=$HELD1 r2=$HELD2 r3=$HELD3
	if [ "$others" -gt 0 ]; then
		log "$id: $(fmt_int "$others") more subscriptions of other types (idle)"
		subscribe_others "$others" "http://127.0.0.1:$r1" || return 1
	fi
	api POST /v1/events "$(cat "$EVENT")"
	probe=$(printf '%s' "$HTTP_BODY" | jq -r .deliveries 2>/dev/null || true)
	if [ "$HTTP_STATUS" != 202 ] || [ "$probe" != 3 ]; then
		note "row $id: probe POST /v1/events answered $HTTP_STATUS $(printf '%s' "$HTTP_BODY" | head -c 200) (expected 202, deliveries 3)"
		row "$id hookrelay delivery of a backlog" "not measured (see notes)" "—" "—"
		return 1
	fi
	log "$id: building backlog of $events events x 3 (receivers holding)"
	fill_backlog "$events" "$RUN/batch100.json" 100
	alive || { relay_gone delivery; return 1; }
	expect=$(((FILL_OK + 1) * 3))
	note "row $id: backlog of $(fmt_int "$((FILL_OK + 1))") events x 3 subscriptions built through the batch route (100/call, 4 in flight) in ${FILL_S} s = $(fmt_int "$(awk -v a="$FILL_OK" -v s="$FILL_S" 'BEGIN { print a / (s > 0 ? s : 1) }')") events/s, receivers holding; relay run with --delivery-timeout 300s so held requests do not time out"
	set_enabled false || return 1
	release "$r1" "$r2" "$r3"
	wait_stable "$r1" "$r2" "$r3" || note "row $id: deliveries kept arriving for 15 s after the subscriptions were disabled"
	base=$(recv_sum "$r1" "$r2" "$r3")
	hwm_before=$(vmhwm "$RELAY_PID")
	log "$id: $base delivered before the clock starts (the requests the receivers held)"

	# drain window: what the budget leaves after rows 5 and 6b (>= 40 s, <= 120 s); after
	# 10 s, give up early when the rate so far cannot empty the backlog within the window.
	# 20 s was too short on a slow minute: 14,688/s needs 20.4 s for 300k.
	left=$((BUDGET - SECONDS - 100))
	[ "$left" -gt 40 ] || left=40
	[ "$left" -lt 120 ] || left=120
	log "$id: enabling subscriptions; draining up to ${left}s"
	t0=$(date +%s.%N)
	ticks0=$(cpu_ticks "$RELAY_PID")
	threads0=$(thread_ticks "$RELAY_PID")
	# shellcheck disable=SC2086 # RECV: pids, split
	recv0=$(pids_ticks $RECV) machine0=$(machine_ticks)
	set_enabled true || return 1
	# BENCH_PERF=FILE: a perf profile of the relay's first 8 s of draining, for tuning
	[ -z "${BENCH_PERF:-}" ] || [ "$id" != 4 ] || perf record ${BENCH_PERF_OPT:--g} -p "$RELAY_PID" -o "$BENCH_PERF" -- sleep 8 >/dev/null 2>&1 &
	got=$base
	local s0=$SECONDS
	HWM_DELIVERY=$hwm_before
	t_end=$((SECONDS + left))
	while [ "$SECONDS" -lt "$t_end" ]; do
		got=$(recv_sum "$r1" "$r2" "$r3")
		alive && HWM_DELIVERY=$(vmhwm "$RELAY_PID")
		[ "$got" -ge "$expect" ] && break
		alive || break
		if [ $((SECONDS - s0)) -ge 10 ] && [ "$got" -gt "$base" ] &&
			[ $(((expect - got) * (SECONDS - s0) / (got - base))) -gt $((t_end - SECONDS)) ]; then
			break
		fi
		sleep 0.25
	done
	# shellcheck disable=SC2086 # RECV: pids, split
	recv1=$(pids_ticks $RECV) machine1=$(machine_ticks)
	# drained: it ended at the last arrival, not at the poll that saw it (up to 0.3 s on)
	t_done=$(date +%s.%N)
	[ "$got" -lt "$expect" ] || t_done=$(recv_last "$t_done" "$r1" "$r2" "$r3")
	el=$(awk -v a="$t0" -v b="$t_done" 'BEGIN { print b - a }')
	n=$(awk -v g="$((got - base))" -v e="$el" 'BEGIN { print g / e }')
	alive || relay_gone delivery
	note "row $id: the relay used $(awk -v t="$(($(cpu_ticks "$RELAY_PID") - ticks0))" -v hz="$(getconf CLK_TCK)" -v g="$((got - base))" -v e="$el" 'BEGIN { printf "%.2f CPUs while draining, %.0f µs of CPU per delivery", t / hz / e, (g > 0 ? t / hz * 1e6 / g : 0) }')"
	note "row $id: µs of CPU per delivery by thread: $(thread_cpu_per "$threads0" "$(thread_ticks "$RELAY_PID")" "$((got - base))")"
	note "row $id: the receivers used $(per_item_us "$((recv1 - recv0))" "$((got - base))") µs of CPU per delivery; the machine was $(machine_busy "$machine0" "$machine1") busy while draining (up to the poll that saw it drained)"
	if [ "$got" -ge "$expect" ]; then
		row "$id hookrelay delivery: $(fmt_int "$((expect - base))") pending deliveries, 3 bare receivers, $caps" \
			"$(fmt_int "$n") deliveries/s (drained in $(printf '%.1f' "$el") s)" "$(fmt_int "$CEIL_CURL") req/s (1c)" "$(pct "$n" "$CEIL_CURL")"
		[ "$got" -eq "$expect" ] || note "row $id: receivers counted $got requests for $expect deliveries (duplicates)"
		pending_empty || note "row $id: after all $expect arrived, GET /v1/deliveries?status=pending&limit=1 answered $HTTP_STATUS $(printf '%s' "$HTTP_BODY" | head -c 300)"
	else
		row "$id hookrelay delivery: $(fmt_int "$((expect - base))") pending deliveries, 3 bare receivers, $caps" \
			"$(fmt_int "$n") deliveries/s — NOT drained: $(fmt_int "$((got - base))") delivered in $(printf '%.0f' "$el") s, stopped early, emptying it would take ~$(fmt_int "$(awk -v r="$((expect - got))" -v n="$n" 'BEGIN { print (n > 0 ? r / n : 0) }')") s more" \
			"$(fmt_int "$CEIL_CURL") req/s (1c)" "$(pct "$n" "$CEIL_CURL")"
	fi
	alive && HWM_DELIVERY=$(vmhwm "$RELAY_PID")
	[ "$id" != 4 ] || row "6a relay peak RSS (VmHWM) during 4" "$HWM_DELIVERY MiB ($hwm_before MiB when the backlog was built)" "—" "—"
	stop "$RELAY_PID" relay
	[ -z "$STOP_NOTE" ] || note "delivery relay: $STOP_NOTE"
	stop_receivers
	return 0
}

# Row 4b: the same with about as many in flight as 1c's 128 (row 4's default caps allow 16
# each, 48 in all): subscriptions allowed 48 each, and each receiver host 48, of which
# an eighth is kept for subscriptions with nothing in flight: 42 each, 126 in all.
section_wide() {
	section_delivery 4b "max_in_flight 48 per subscription, --max-per-host 48 (126 in flight; 1c has 128)" \
		',"max_in_flight":48' "$((BACKLOG_EVENTS / 2))" 0 "--max-per-host 48"
}

# ---- 4e. delivery beside many idle subscriptions ----------------------------------------
# Row 4's shape with a fifth of its backlog, and OTHER_SUBS subscriptions of types no
# event has: a claim must not cost what every subscription's due deliveries would.
section_idle() {
	section_delivery 4e "default caps, $(fmt_int "$OTHER_SUBS") idle subscriptions of other types beside them" \
		"" "$((BACKLOG_EVENTS / 5))" "$OTHER_SUBS"
}

# ---- 4c, 4d. many receivers over https ------------------------------------------------
# N https receivers (one bare_mhd, a listener each, libmicrohttpd's GnuTLS, a certificate
# from a CA this run makes with openssl), one subscription each at the default
# max_in_flight (16). Besides deliveries/s: the connections the receivers accepted (each
# a TLS handshake) and the relay's CPU per delivery.
# - 4c: 50 receivers with a backlog of 400 each (800 wanted in flight, 256 slots). The
#   backlog comes from replay: the events are published with no subscription, the
#   subscriptions are created disabled and replayed (held while disabled), and the clock
#   starts when they are enabled.
# - 4d: 600 receivers, more than the connections kept before --max-idle-connections (256
#   in flight, as many idle), with their subscriptions live: the clock starts at the
#   publish of a batch of 20 events, 12,000 deliveries.
TLS_ROWS="4c:50:400:replay 4d:600:20:live" # row:receivers:events each:shape

section_tls() {
	local r
	if ! command -v openssl >/dev/null ||
		! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$RUN/ca.key" \
			-out "$RUN/ca.pem" -days 2 -subj "/CN=hookrelay bench CA" -addext basicConstraints=critical,CA:TRUE \
			-addext keyUsage=critical,keyCertSign,cRLSign 2>"$RUN/openssl.err" ||
		! openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$RUN/recv.key" \
			-out "$RUN/recv.csr" -subj /CN=receiver 2>>"$RUN/openssl.err" ||
		! printf 'subjectAltName=IP:127.0.0.1\n' >"$RUN/recv.ext" ||
		! openssl x509 -req -in "$RUN/recv.csr" -CA "$RUN/ca.pem" -CAkey "$RUN/ca.key" -CAcreateserial \
			-out "$RUN/recv.pem" -days 2 -extfile "$RUN/recv.ext" 2>>"$RUN/openssl.err"; then
		row "4c, 4d hookrelay delivery to many https receivers" "skipped: openssl could not make the certificates" "—" "—"
		return 1
	fi
	for r in $TLS_ROWS; do
		# shellcheck disable=SC2046 # the fields, split on purpose
		tls_row $(printf '%s' "$r" | tr : ' ') || return 1
	done
	return 0
}

# tls_row ROW RECEIVERS EVENTS replay|live
tls_row() {
	local label=$1 receivers=$2 events=$3 shape=$4 ca=$RUN/ca.pem
	local ports p0 id ids="" i expect got t0 el n ticks0 threads0 conns t_end t_done
	"$BIN/bare_mhd" --max-seconds 900 --status 200 --threads 1 --listeners "$receivers" \
		--tls "$RUN/recv.pem" "$RUN/recv.key" >"$RUN/wide.port" 2>"$RUN/wide.err" &
	MHD_PID=$!
	PIDS="$PIDS $MHD_PID"
	RECV="$RECV $MHD_PID"
	wait_file "$RUN/wide.port" '^[0-9 ]+$' 30 || { note "row $label: the https receivers did not start: $(head -c 200 "$RUN/wide.err")"; return 1; }
	ports=$(head -1 "$RUN/wide.port")
	p0=${ports%% *}
	wide_count() { curl -s -m 5 --cacert "$ca" "https://127.0.0.1:$p0/$1" 2>/dev/null || echo 0; }
	start_relay "tls-$label" --ca-file "$ca" || return 1
	batch_body $((events < 100 ? events : 100)) "$RUN/tls-batch.json"
	publish_tls_batches() {
		for i in $(seq 1 $(((events + 99) / 100))); do
			api POST /v1/events/batch "$(cat "$RUN/tls-batch.json")"
			[ "$HTTP_STATUS" = 202 ] || { note "row $label: POST /v1/events/batch answered $HTTP_STATUS"; return 1; }
		done
	}
	[ "$shape" = live ] || publish_tls_batches || return 1
	if [ "$shape" = live ]; then
		for p in $ports; do
			printf '{"url":"https://127.0.0.1:%s/hook","event_types":["order.*"]}\n' "$p"
		done | create_subscriptions "$receivers" "row $label subscriptions" || return 1
	fi
	for p in $([ "$shape" = live ] || echo "$ports"); do
		api POST /v1/subscriptions "{\"url\":\"https://127.0.0.1:$p/hook\",\"event_types\":[\"order.*\"],\"enabled\":false}"
		id=$(printf '%s' "$HTTP_BODY" | jq -r '.id // empty' 2>/dev/null || true)
		[ "$HTTP_STATUS" = 201 ] && [ -n "$id" ] || { note "row $label: POST /v1/subscriptions answered $HTTP_STATUS"; return 1; }
		api POST "/v1/subscriptions/$id/replay" '{"since":"1970-01-01T00:00:00.000Z"}'
		[ "$HTTP_STATUS" = 202 ] || { note "row $label: replay answered $HTTP_STATUS $(printf '%s' "$HTTP_BODY" | head -c 200)"; return 1; }
		ids="$ids $id"
	done
	expect=$((receivers * events))
	SUBS=$ids
	t0=$(date +%s.%N)
	ticks0=$(cpu_ticks "$RELAY_PID")
	threads0=$(thread_ticks "$RELAY_PID")
	if [ "$shape" = live ]; then
		publish_tls_batches || return 1
	else
		set_enabled true || return 1
	fi
	t_end=$((SECONDS + 60))
	got=0
	while [ "$SECONDS" -lt "$t_end" ] && alive; do
		got=$(wide_count count)
		[ "$got" -ge "$expect" ] && break
		sleep 0.25
	done
	t_done=$(date +%s.%N)
	[ "$got" -lt "$expect" ] || t_done=$(ns_or "$(wide_count last)" "$t_done")
	el=$(awk -v a="$t0" -v b="$t_done" 'BEGIN { print b - a }')
	n=$(awk -v g="$got" -v e="$el" 'BEGIN { print g / e }')
	conns=$(wide_count connections)
	alive || relay_gone "tls-$label"
	note "row $label: µs of CPU per delivery by thread: $(thread_cpu_per "$threads0" "$(thread_ticks "$RELAY_PID")" "$got"); peak RSS $(vmhwm "$RELAY_PID") MiB"
	row "$label hookrelay delivery: $(fmt_int "$expect") $([ "$shape" = live ] && echo "deliveries of $events events published at once" || echo "pending deliveries") to $receivers https receivers (one subscription each, default caps: $(fmt_int $((receivers * 16))) wanted in flight, 256 allowed)" \
		"$(fmt_int "$n") deliveries/s ($(fmt_int "$got") in $(printf '%.1f' "$el") s); $(fmt_int "$conns") TLS connections; $(fmt_int "$(awk -v t="$(($(cpu_ticks "$RELAY_PID") - ticks0))" -v hz="$(getconf CLK_TCK)" -v g="$got" 'BEGIN { printf "%.0f", (g > 0 ? t / hz * 1e6 / g : 0) }')") µs of relay CPU each" \
		"$(fmt_int "$CEIL_CURL") req/s (1c, plain http)" "$(pct "$n" "$CEIL_CURL")"
	stop "$RELAY_PID" relay
	stop_receivers
	return 0
}

# ---- 5. end to end ---------------------------------------------------------------------
section_e2e() {
	local r out st ok
	start_mhd lat --status 200 --threads 2 --latency; r=$MHD_PORT
	start_relay e2e || return 1
	subscribe "http://127.0.0.1:$r/a" "http://127.0.0.1:$r/b" "http://127.0.0.1:$r/c" || return 1
	log "5: 1,000 events/s for 10 s"
	out=$("$BIN/loadgen" --url "$API/v1/events" --body "$RUN/event_stamp.json" --rate 1000 \
		--seconds 10 --requests 10000 --inflight 256 --stamp)
	ok=$(kv ok "$out")
	[ "$ok" = 10000 ] || note "row 5: load generator: $out"
	for _ in $(seq 1 150); do
		[ "$(recv_sum "$r")" -ge $((ok * 3)) ] && break
		alive || break
		sleep 0.2
	done
	alive || relay_gone e2e
	st=$(curl -s -m 10 "http://127.0.0.1:$r/stats")
	row "5 end to end at 1,000 events/s x 10 s, 3 subs: publisher send -> receiver arrival" \
		"p50 $(us "$(kv p50_us "$st")"), p90 $(us "$(kv p90_us "$st")"), p99 $(us "$(kv p99_us "$st")"), max $(us "$(kv max_us "$st")") ($(kv with_stamp "$st") of $((ok * 3)) deliveries)" "—" "—"
	row "5b ingest answer (202) latency in the same run" \
		"p50 $(us "$(kv p50_us "$out")"), p99 $(us "$(kv p99_us "$out")"), max $(us "$(kv max_us "$out")")" "—" "—"
	note "row 5: $(wal_syncs)"
	stop "$RELAY_PID" relay
	[ -z "$STOP_NOTE" ] || note "e2e relay: $STOP_NOTE"
	stop_receivers
	return 0
}

# ---- 6b. 1,000,000-delivery backlog -----------------------------------------------------
section_big() {
	local r1 r2 r3 need rate hwm_built got
	rate=${BATCH_RATE:-0}
	need=$(awk -v n="$BIG_EVENTS" -v r="$rate" 'BEGIN { if (r <= 0) print 9999; else printf "%d", n / r + 25 }')
	if [ $((SECONDS + need)) -gt "$BUDGET" ]; then
		row "6b relay peak RSS with a 1,000,000-delivery backlog" \
			"skipped: would need ~${need} s at the measured batch rate, $((BUDGET - SECONDS)) s of the ${BUDGET} s budget left" "—" "—"
		return 0
	fi
	start_held_relay b big || return 1
	r1=$HELD1 r2=$HELD2 r3=$HELD3
	log "6b: building backlog of $BIG_EVENTS events x 3 (receivers holding)"
	fill_backlog "$BIG_EVENTS" "$RUN/batch1000.json" 1000
	alive || { relay_gone big; return 1; }
	hwm_built=$(vmhwm "$RELAY_PID")
	# What a Prometheus scrape costs with the backlog in place (the slowest of three).
	local scrape pending
	scrape=$(for i in 1 2 3; do curl -s -o /dev/null -w '%{time_total}\n' "$API/metrics"; done |
		awk '$1 > m { m = $1 } END { printf "%.2f", m * 1000 }')
	pending=$(curl -s "$API/metrics" | awk '/^hookrelay_deliveries_pending / { print $2 }')
	note "row 6b: GET /metrics with $(fmt_int "${pending:-0}") deliveries pending took ${scrape} ms (slowest of 3)"
	release "$r1" "$r2" "$r3"
	sleep 10
	alive || relay_gone big
	got=$(recv_sum "$r1" "$r2" "$r3")
	row "6b relay peak RSS with a $(fmt_int "$((FILL_OK * 3))")-delivery backlog" \
		"$hwm_built MiB after ingest (${FILL_S} s); $(vmhwm "$RELAY_PID") MiB after 10 s of delivering ($(fmt_int "$got") delivered)" "—" "—"
	stop "$RELAY_PID" relay
	[ -z "$STOP_NOTE" ] || note "big-backlog relay: $STOP_NOTE"
	stop_receivers
	return 0
}

# ---- 7. ingest with millions of events stored ---------------------------------------
# Single-event ingest on an empty store, then on the same store grown to STORED_EVENTS
# old events with a delivered delivery per subscription (fill_store writes them with the
# relay stopped). The receivers hold every request, so deliveries do not compete with
# ingest for the CPU and the two runs differ only in what is stored. The stored events
# are dated 2020: --retention 0 keeps the relay from deleting them while it is measured.
section_stored() {
	local r1 r2 r3 W n0 n1 out
	start_held_relay s stored --retention 0 || return 1
	r1=$HELD1 r2=$HELD2 r3=$HELD3
	log "7: ingest, empty store"
	W=$(wrk_run post.lua "$API/v1/events" 64 "$EVENT")
	[ -n "$W" ] || { note "row 7: wrk failed on the empty store"; return 1; }
	n0=$(wrk_rate "$W")
	note "row 7, empty store: $(wal_syncs)"
	stop "$RELAY_PID" relay
	log "7: storing $STORED_EVENTS old events"
	out=$("$BIN/fill_store" --db "$RUN/stored/relay.db" --events "$STORED_EVENTS") ||
		{ note "row 7: fill_store failed"; return 1; }
	# The fill writes gigabytes: sync, so that their writeback cannot fall into the run.
	local t_sync
	t_sync=$(date +%s.%N)
	sync
	note "row 7: fill_store: $out; db $(du -sh "$RUN/stored" | cut -f1); a sync after it took $(awk -v a="$t_sync" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s"
	start_relay stored --delivery-timeout 300s --retention 0 || return 1
	log "7: ingest, $STORED_EVENTS events stored"
	W=$(wrk_run post.lua "$API/v1/events" 64 "$EVENT")
	[ -n "$W" ] || { note "row 7: wrk failed on the grown store"; return 1; }
	n1=$(wrk_rate "$W")
	note "row 7, $(fmt_int "$STORED_EVENTS") events stored: $(wal_syncs)"
	row "7 POST /v1/events, 3 matching subs (receivers holding), $(fmt_int "$STORED_EVENTS") events already stored" \
		"$(fmt_int "$n1") events/s, p50 $(us "$(kv p50_us "$W")"), p99 $(us "$(kv p99_us "$W")")" \
		"$(fmt_int "$n0") events/s on the same store empty" "$(pct "$n1" "$n0")"
	stop "$RELAY_PID" relay
	stop_receivers
	return 0
}

STOPPED_EARLY=""
if [ ! -x "$RELAY" ]; then
	skip_relay_rows "build/hookrelay is missing"
	STOPPED_EARLY=" all"
else
	BATCH_RATE=0
	for sec in ingest delivery wide idle e2e big tls stored; do
		case " $ONLY " in *" $sec "*) ;; *) continue ;; esac
		"section_$sec" || { note "section $sec stopped early"; STOPPED_EARLY="$STOPPED_EARLY $sec"; }
		stop_relay_if_running
		stop_receivers
	done
fi

# ---- table ---------------------------------------------------------------------------
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "hookrelay bench — $(date -u '+%Y-%m-%d %H:%M UTC') — nproc $(nproc) — CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1) — $(sed -n 's/^MemTotal: *//p' /proc/meminfo) RAM — load avg at start $LOAD_START, at end $LOAD_END"
echo
echo "| measurement | figure | ceiling | ratio |"
echo "| --- | --- | --- | --- |"
cat "$ROWS"
echo
echo "Notes:"
echo "- Everything (wrk/loadgen, relay, receivers) shares the same $(nproc) CPUs on 127.0.0.1; wrk runs are ${DUR} s; total run time ${SECONDS} s."
echo "- Relay flags are defaults except --listen, --db, --allow-private-targets (and --delivery-timeout 300s in 2b, 3c, 3d, 4, 4b, 4e, 6b and 7, --retention 0 in 7, --max-per-host 48 in 4b, --ca-file with the run's own CA in 4c and 4d); subscriptions use the default max_in_flight (16) except in 4b."
echo "- The dbs live in build/bench/run.*/ (on the repo's filesystem, so fsync is real; removed at exit unless BENCH_KEEP=1); relay stderr of this run: build/bench/logs/. The relay runs as build/hookrelay through a symlink named relay-under-test."
cat "$NOTES"
# A table with rows missing is printed, and the run fails: a caller must not take it
# for a whole one.
[ -z "$STOPPED_EARLY" ] || { echo "bench: sections stopped early:$STOPPED_EARLY (see the notes)" >&2; exit 1; }
