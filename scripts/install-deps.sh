#!/bin/sh
# Installs what hookrelay needs to build and test, only where it is missing:
# the -dev packages pkg-config cannot find, a C compiler, clang with its libFuzzer
# runtime (make fuzz), Node.js/npm for the integration tests (they verify signatures
# with the standardwebhooks npm package), sqlite3 and curl for the tests, walk-through
# and bench, openssl for the https tests' certificates, and the system's CA bundle that
# https receivers are checked against, and `ip`, which the SSRF and DNS tests need to
# bring up loopback in their own network namespace (without it they are skipped).
# Arguments name more commands whose Debian package has the same name, installed the
# same way when missing: `make bench` asks for wrk and jq, `make valgrind` for valgrind.
# Debian 12; uses apt-get (run as root, or with sudo available).
set -eu
need=""
for extra in "$@"; do
	command -v "$extra" >/dev/null 2>&1 || need="$need $extra"
done
have_pc() { pkg-config --exists "$1" 2>/dev/null; }
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
command -v cc >/dev/null 2>&1 || need="$need gcc"
command -v make >/dev/null 2>&1 || need="$need make"
have_pc libmicrohttpd || need="$need libmicrohttpd-dev"
have_pc libcurl || need="$need libcurl4-openssl-dev"
have_pc sqlite3 || need="$need libsqlite3-dev"
have_pc jansson || need="$need libjansson-dev"
have_pc libcrypto || need="$need libssl-dev"
have_fuzzer_rt() {
	command -v clang >/dev/null 2>&1 &&
		ls "$(clang --print-runtime-dir 2>/dev/null)"/libclang_rt.fuzzer*.a >/dev/null 2>&1
}
command -v clang >/dev/null 2>&1 || need="$need clang"
have_fuzzer_rt || need="$need libclang-rt-dev"
command -v sqlite3 >/dev/null 2>&1 || need="$need sqlite3"  # integrity checks in the reliability tests
command -v curl >/dev/null 2>&1 || need="$need curl"        # the README's walk-through, make bench
command -v openssl >/dev/null 2>&1 || need="$need openssl"  # tls.test.mjs makes its CA
[ -s /etc/ssl/certs/ca-certificates.crt ] || need="$need ca-certificates" # libcurl's default
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
command -v ip >/dev/null 2>&1 || need="$need iproute2"   # ssrf.test, dns.test: netns loopback
[ -z "$need" ] && exit 0
echo "install-deps: installing:$need"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
