#!/bin/bash
# The test command of the README: installs what the suite needs from
# Debian's packages, builds with warnings as errors, and runs every test
# (C unit tests and integration tests that really mount) with pytest.
#
#   scripts/test.sh               the suite on a normal build
#   scripts/test.sh --sanitize    ... and again under ASan + UBSan
#   CI=true scripts/test.sh       what CI runs: both, and the fuzzer briefly
#
# Extra arguments after -- go to pytest (e.g. -- -k kill9 -x).
# Ends with one line "N passed, N failed" summing every run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

sanitize=0
[ "${CI:-}" = "true" ] && sanitize=1
pytest_args=()
while [ $# -gt 0 ]; do
	case "$1" in
	--sanitize) sanitize=1 ;;
	--) shift; pytest_args=("$@"); break ;;
	*) echo "usage: $0 [--sanitize] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
	esac
	shift
done

if [ "$(id -u)" -ne 0 ]; then
	echo "$0: the integration tests mount filesystems and need root (sudo $0)" >&2
	exit 2
fi

./scripts/install-deps.sh
modprobe fuse 2>/dev/null || true

build() { # dir, extra meson args...
	local dir=$1; shift
	if [ -d "$dir" ]; then
		meson setup --reconfigure "$dir" --werror "$@" >/dev/null
	else
		meson setup "$dir" --werror "$@" >/dev/null
	fi
	ninja -C "$dir"
}

total_passed=0
total_failed=0
status=0
run_suite() { # label, build dir
	local label=$1 dir=$2 xml
	xml=$(mktemp /tmp/aimfs-junit.XXXXXX)
	echo "=== $label: pytest with $dir ==="
	set +e
	AIM_BUILD="$ROOT/$dir" /usr/bin/python3 -m pytest -q -rfE -p no:cacheprovider \
		--junitxml="$xml" tests "${pytest_args[@]}"
	local rc=$?
	set -e
	read -r p f < <(/usr/bin/python3 - "$xml" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 1); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
sk = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - sk, f)
PY
)
	rm -f "$xml"
	total_passed=$((total_passed + p))
	total_failed=$((total_failed + f))
	if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
		total_failed=$((total_failed + 1)) # pytest itself failed
	fi
	[ $rc -eq 0 ] || status=1
}

build build
run_suite "normal build" build
if [ $sanitize -eq 1 ]; then
	build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=67
	run_suite "ASan+UBSan build" build-asan
	unset ASAN_OPTIONS UBSAN_OPTIONS
fi
if [ "${CI:-}" = "true" ] && [ -x fuzz/run.sh ]; then
	echo "=== fuzzing the segment decoder for 60 s ==="
	if fuzz/run.sh 60; then
		total_passed=$((total_passed + 1))
	else
		total_failed=$((total_failed + 1)); status=1
	fi
fi
echo "$total_passed passed, $total_failed failed"
exit $status
