#!/bin/bash
# The test command of the README: installs what the suite needs from
# Debian's packages, builds with warnings as errors, and runs every test
# (C unit tests and integration tests that really mount) with pytest.
#
#   scripts/test.sh               the suite on a normal build
#   scripts/test.sh --sanitize    ... and, at the same time, under ASan + UBSan
#   CI=true scripts/test.sh       what CI runs: both (the sanitizer pass through
#                                 FUSE over io_uring where the kernel has it),
#                                 and the fuzzer briefly
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

# Tests that drive a QEMU guest or build the whole tree again add nothing
# under the sanitizers (the guest's time is TCG's): the ASan pass leaves
# them to the normal one.
ASAN_SKIP=(--ignore=tests/test_guest.py --ignore=tests/test_powercut_guest.py
	--ignore=tests/test_full_disk_guest.py --ignore=tests/test_install.py)
# The kill -9 and power-cut permutations run in both cache modes in the
# normal pass; under the sanitizers the writeback half would run the same
# code again (the writeback paths stay covered there by the workload,
# replay, fio and the other writeback tests) for two more minutes on the
# longer pass.
ASAN_SKIP+=(-k "not (writeback and (kill9_inside_operation_window or kill9_during_recovery or kill9_during_workload_loses_nothing or power_cut_in_process))")

results=$(mktemp -d /tmp/aimfs-results.XXXXXX)
# FUSE over io_uring (-o io_uring=on) needs the fuse module's enable_uring
# on (Linux 6.14+); the sanitizer pass runs every mount through the ring,
# the normal pass through /dev/fuse.  Restored as found at exit.
uring_param=/sys/module/fuse/parameters/enable_uring
uring_before=
if [ -w "$uring_param" ]; then
	uring_before=$(cat "$uring_param")
	echo Y >"$uring_param"
fi
restore() {
	rm -rf "$results"
	if [ -n "$uring_before" ]; then echo "$uring_before" >"$uring_param"; fi
}
trap restore EXIT
asan_ring=
[ -n "$uring_before" ] && asan_ring=on
run_suite() { # label, build dir, extra pytest args...: writes $results/<dir>.{log,sum}
	local label=$1 dir=$2 xml rc p f
	shift 2
	xml=$results/$dir.xml
	{
		echo "=== $label: pytest with $dir ==="
		set +e
		AIM_BUILD="$ROOT/$dir" /usr/bin/python3 -m pytest -q -rfE -p no:cacheprovider \
			--durations=15 --junitxml="$xml" tests "$@" "${pytest_args[@]}"
		rc=$?
		set -e
	} >"$results/$dir.log" 2>&1
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
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=$((f + 1)) # pytest itself failed
	fi
	echo "$p $f $rc" >"$results/$dir.sum"
}

pid_fuzz=
start_fuzz() { # CI only: the segment decoder fuzzed for 60 s, in the background
	[ "${CI:-}" = "true" ] && [ -x fuzz/run.sh ] || return 0
	{ fuzz/run.sh 60 >"$results/fuzz.log" 2>&1; echo $? >"$results/fuzz.rc"; } &
	pid_fuzz=$!
}

build build
dirs=(build)
if [ $sanitize -eq 1 ]; then
	build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
	dirs+=(build-asan)
	# Both passes at once: most of a test's time is waiting (for a
	# receiver, a seal, a guest), so two passes take little longer than one.
	# Each pass starts its servers on ports of its own (tests/aimtest.py).
	AIM_PORT_RANGE=20000-26000 run_suite "normal build" build &
	pid_normal=$!
	AIM_PORT_RANGE=26000-32000 AIM_IO_URING=$asan_ring \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=67 \
		run_suite "ASan+UBSan build${asan_ring:+, FUSE over io_uring}" build-asan "${ASAN_SKIP[@]}" &
	pid_asan=$!
	wait $pid_normal || true
	# The sanitizer pass ends minutes after the normal one: the fuzzer
	# runs in that tail instead of after it.
	start_fuzz
	wait $pid_asan || true
else
	run_suite "normal build" build
	start_fuzz
fi
[ -z "$pid_fuzz" ] || wait $pid_fuzz || true

total_passed=0
total_failed=0
status=0
for dir in "${dirs[@]}"; do
	cat "$results/$dir.log" 2>/dev/null || true
	p=0 f=1 rc=1 # a pass that died before its summary
	[ -f "$results/$dir.sum" ] && read -r p f rc <"$results/$dir.sum"
	total_passed=$((total_passed + p))
	total_failed=$((total_failed + f))
	[ "$rc" -eq 0 ] || status=1
done
if [ -n "$pid_fuzz" ]; then
	echo "=== fuzzing the segment decoder for 60 s ==="
	cat "$results/fuzz.log" 2>/dev/null || true
	if [ "$(cat "$results/fuzz.rc" 2>/dev/null)" = 0 ]; then
		total_passed=$((total_passed + 1))
	else
		total_failed=$((total_failed + 1)); status=1
	fi
fi
echo "$total_passed passed, $total_failed failed"
exit $status
