#!/bin/sh
# Builds the libFuzzer harnesses into OUTDIR (default build-fuzz/ at the top
# of the tree) with clang, ASan and UBSan.  Compiles the decoder's sources
# directly, so it needs neither meson nor a configured build directory.
# Needs Debian's clang and libclang-rt-14-dev (the libFuzzer, ASan and UBSan
# runtimes) and libxxhash-dev.  The decoder's pread window is 256 bytes here (64 KiB
# in aimfs), so that the fuzzer's inputs of up to 8 KiB refill it often.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${1:-$root/build-fuzz}
CC=${CC:-clang}

if ! command -v "$CC" >/dev/null 2>&1; then
    echo "fuzz/build.sh: $CC not found (apt-get install clang libclang-rt-14-dev)" >&2
    exit 1
fi
mkdir -p "$out"
# shellcheck disable=SC2086
"$CC" -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -std=gnu11 -Wall -Wextra -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
    -I"$root/format" -I"$root/common" -DSEG_WINDOW_SIZE=256 ${CFLAGS:-} \
    "$here/fuzz_segment.c" "$root/format/segment.c" "$root/format/precheck.c" "$root/format/names.c" \
    "$root/common/log.c" "$root/common/clock.c" "$root/common/fileio.c" -lxxhash -o "$out/fuzz_segment"
echo "fuzz/build.sh: built $out/fuzz_segment"
