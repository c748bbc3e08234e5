#!/bin/sh
# Usage: fuzz/run.sh [SECONDS]   (default 60)
#
# Builds the harness into $FUZZ_BUILD (default build-fuzz/ at the top of the
# tree) and fuzzes the segment decoder for SECONDS over fuzz/corpus/segment/.
# New inputs are found in a scratch corpus and then merged into
# fuzz/corpus/segment/, so that only inputs adding coverage are kept (commit
# them).  A crash leaves crash-* (and the input to reproduce it) in the build
# directory and makes the script fail; reproduce with
#   build-fuzz/fuzz_segment build-fuzz/crash-<hash>
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
secs=${1:-60}
build=${FUZZ_BUILD:-$root/build-fuzz}
corpus=$here/corpus/segment
case $secs in ''|*[!0-9]*) echo "usage: fuzz/run.sh [SECONDS]" >&2; exit 2;; esac

"$here/build.sh" "$build"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/aimfs-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM
mkdir -p "$corpus"

status=0
"$build/fuzz_segment" -max_total_time="$secs" -max_len=8192 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -dict="$here/segment.dict" \
    -artifact_prefix="$build/" "$scratch" "$corpus" || status=$?

# Keep what adds coverage, even after a crash (it may be what led there).
"$build/fuzz_segment" -merge=1 -max_len=8192 "$corpus" "$scratch" >/dev/null 2>&1 || true
if [ "$status" -ne 0 ]; then
    echo "fuzz/run.sh: the fuzzer failed (status $status); see $build/crash-* or leak-*" >&2
    exit "$status"
fi
echo "fuzz/run.sh: no crash in $secs s; corpus: $(ls "$corpus" | wc -l) inputs"
