#!/usr/bin/env bash
# remote-bench.sh - how fast aim-remote applies and receives segments, against
# fio writing the same data to the same target and nginx WebDAV receiving the
# same files, on this machine, in the same run. See bench/README.md.
#
#   sudo bench/remote-bench.sh [--quick] [--tests LIST] [--rounds N] ...
#
# Needs root (drop_caches, FUSE, losetup, a network namespace), fio, curl,
# nginx (receive test), losetup (loop tests), fusermount3, ip, nsenter and
# /usr/bin/python3. Every process it starts is stopped by PID, every mount,
# loop device and namespace undone and the scratch directory removed, on exit,
# on error and on Ctrl-C.

set -uo pipefail

PROG=remote-bench
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
CMDLINE=$(cmdline_of remote-bench.sh "$@")
ALL_TESTS="apply-file-seq apply-file-rand apply-loop-seq apply-loop-rand receive"

usage() {
    cat <<EOF
usage: sudo $0 [options]

  --build DIR        build to measure: DIR/aimfs/aimfs, DIR/tools/aimctl,
                     DIR/remote/aim-remote (default: $(default_build))
  --dir DIR          create the scratch directory inside DIR: the filesystem under
                     test, where segments, targets and the loop file live (default /var/tmp)
  --size SIZE        sequential data per run and size of the target file / loop
                     device (default 2G; --quick 256M)
  --rand-ios N       random 4 KiB writes per run (default 131072 = 512 MiB; --quick 16384)
  --seq-fsync N      a barrier (fsync) every N sequential 1 MiB writes (default 64)
  --rand-fsync N     a barrier (fsync) every N random 4 KiB writes (default 1024)
  --rounds N         rounds; medians are reported (default 3; --quick 1)
  --tests LIST       comma-separated subset of: ${ALL_TESTS// /,}
  --aimfs-opts OPTS  extra -o options for the aimfs mount that makes the segments
  --cold             do not read the segments into the page cache before applying
                     or sending them (default: they are warm, as just received)
  --no-matched       leave out the informational third side of the apply tests: fio
                     with as many fsyncs as the applier's durable points
  --profile          perf record aim-remote during its runs of round 1 (raw/prof/)
  --quick            smoke test: --size 256M --rand-ios 16384 --rounds 1
  --out FILE         markdown report (default bench/results/remote-<date>.md); next
                     to it FILE.json and FILE.raw/
  -h, --help         this text
EOF
}

# ---------------------------------------------------------------- options
BUILD_ARG=$(default_build) BASE_DIR=/var/tmp OUT="" QUICK=0 COLD=0 PROFILE=0
MATCHED=1 OPT_SIZE="" OPT_RAND_IOS="" OPT_ROUNDS="" SEQ_FSYNC=64 RAND_FSYNC=1024 AIMFS_OPTS=""
TESTS_ARG=${ALL_TESTS// /,}
while [[ $# -gt 0 ]]; do
    opt=$1
    if [[ $opt == --*=* ]]; then set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; opt=$1; fi
    case $opt in
    --build) need_arg "$@"; BUILD_ARG=$2; shift 2 ;;
    --dir) need_arg "$@"; BASE_DIR=$2; shift 2 ;;
    --size) need_arg "$@"; OPT_SIZE=$2; shift 2 ;;
    --rand-ios) need_arg "$@"; OPT_RAND_IOS=$2; shift 2 ;;
    --seq-fsync) need_arg "$@"; SEQ_FSYNC=$2; shift 2 ;;
    --rand-fsync) need_arg "$@"; RAND_FSYNC=$2; shift 2 ;;
    --rounds) need_arg "$@"; OPT_ROUNDS=$2; shift 2 ;;
    --tests) need_arg "$@"; TESTS_ARG=$2; shift 2 ;;
    --aimfs-opts) need_arg "$@"; AIMFS_OPTS=$2; shift 2 ;;
    --cold) COLD=1; shift ;;
    --no-matched) MATCHED=0; shift ;;
    --profile) PROFILE=1; shift ;;
    --quick) QUICK=1; shift ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $opt" ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    SIZE=${OPT_SIZE:-256M} RAND_IOS=${OPT_RAND_IOS:-16384} ROUNDS=${OPT_ROUNDS:-1}
else
    SIZE=${OPT_SIZE:-2G} RAND_IOS=${OPT_RAND_IOS:-131072} ROUNDS=${OPT_ROUNDS:-3}
fi
[[ $SIZE =~ ^[1-9][0-9]*[KkMmGgTt]?$ ]] || die "--size must look like 256M or 2G, not '$SIZE'"
SIZE_BYTES=$(size_bytes "$SIZE") || die "cannot parse --size $SIZE"
((SIZE_BYTES % 1048576 == 0)) || die "--size must be a multiple of 1M"
for v in RAND_IOS SEQ_FSYNC RAND_FSYNC ROUNDS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--${v,,} must be a positive integer, not '${!v}'"
done
((RAND_IOS * 4096 <= SIZE_BYTES)) || die "--rand-ios $RAND_IOS writes more than --size (fio's random map covers each block once)"
select_tests
has_re() { [[ " ${TESTS[*]} " =~ $1 ]]; }

# ---------------------------------------------------------------- preflight
[[ $EUID -eq 0 ]] || die "needs root (drop_caches, FUSE, losetup, network namespace): run 'sudo $0 $*'"
[[ -x $PY ]] || die "$PY not found"
for c in fio curl fusermount3 mountpoint findmnt numfmt ip nsenter; do
    command -v "$c" >/dev/null || die "'$c' not found (apt-get install -y fio curl fuse3 iproute2 util-linux)"
done
has_test receive && { command -v nginx >/dev/null || die "nginx not found (apt-get install -y nginx-light), or leave out the receive test"; }
has_re 'apply-loop' && { command -v losetup >/dev/null || die "losetup not found"; }
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"
find_build "$BUILD_ARG"
[[ -d $BASE_DIR ]] || die "--dir $BASE_DIR is not a directory"

trap bench_cleanup EXIT
trap 'log "interrupted (SIGINT)"; partial_report; exit 130' INT
trap 'log "terminated (SIGTERM)"; partial_report; exit 143' TERM

make_scratch_and_output remote fio logs apply curl

partial_report() {
    if [[ -s $RUNS ]]; then
        "$PY" "$HELPER" report --kind remote --raw "$RAW" --md "$OUT" --json "$OUT_JSON" --partial >/dev/null 2>&1 &&
            log "partial report of the completed runs: $OUT"
    fi
}
fail() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    partial_report
    exit 1
}

netns_create
REMOTE_STATUS=127.0.0.1:9381
RECV_PORT=9443
NGINX_PORT=9444
AIMFS_STATUS=127.0.0.1:9380

meta_machine
meta size "$SIZE"
meta rand_ios "$RAND_IOS"
meta seq_fsync "$SEQ_FSYNC"
meta rand_fsync "$RAND_FSYNC"
meta rounds "$ROUNDS"
meta tests "${TESTS[*]}"
meta segments_in_cache "$([[ $COLD == 1 ]] && echo "no (--cold: dropped before each run, both sides)" || echo "yes (read once after drop_caches, as just received; before fio's runs too, so that both sides start from the same memory state)")"
meta network "private network namespace $NETNS, loopback only"

# ---------------------------------------------------------------- space
need=$((SIZE_BYTES * 5 + RAND_IOS * 4200 + (1 << 30)))
avail=$(($(stat -f -c '%a*%S' "$SCRATCH")))
((avail >= need)) || fail "not enough space in $SCRATCH: $((avail >> 20)) MiB free, need about $((need >> 20)) MiB"

# ---------------------------------------------------------------- segments, made once
# aimfs over a scratch backing directory holding vm.raw (laid out before the
# first mount, so it is the group's starting point and the segments hold only
# the writes); fio through the mount with a fixed seed; one fresh journal (one
# consistency group) per pattern, so each set starts at segment 1.
GEN="$SCRATCH/gen"
mkdir -p "$GEN/backing" "$GEN/mnt"
log "scratch $SCRATCH ($(findmnt -no FSTYPE -T "$SCRATCH")), results $OUT"
log "laying out vm.raw ($SIZE) for the source"
fio_bg "$RAW/fio/layout-source.stderr" --name=layout --filename="$GEN/backing/vm.raw" --size="$SIZE" \
    --rw=write --bs=1M --direct=1 --ioengine=psync --end_fsync=1 --output=/dev/null ||
    { show_log "$RAW/fio/layout-source.stderr"; fail "laying out the source with fio failed"; }

SEQ_GEN_ARGS="--rw=write --bs=1M --size=$SIZE --fsync=$SEQ_FSYNC"
RAND_GEN_ARGS="--rw=randwrite --bs=4k --size=$SIZE --number_ios=$RAND_IOS --randseed=42 --fsync=$RAND_FSYNC"
declare -A SEGS=() GROUP=() LAST_LSN=() SEGSTATS=()
make_segments() { # PATTERN FIO_ARGS
    local pat=$1 args=$2 j="$SCRATCH/j-$1" lf="$RAW/logs/aimfs-gen-$1.log" opts
    mkdir -p "$j"
    opts="journal=$j,status=$AIMFS_STATUS${AIMFS_OPTS:+,$AIMFS_OPTS}"
    mount_aimfs "$lf" -o "$opts" "$GEN/backing" "$GEN/mnt"
    log "making the $pat segments: fio $args --direct=1 --ioengine=psync through aimfs"
    # shellcheck disable=SC2086
    fio_bg "$RAW/fio/gen-$pat.stderr" --name=gen --filename="$GEN/mnt/vm.raw" $args \
        --direct=1 --ioengine=psync --output-format=json --output="$RAW/fio/gen-$pat.json" ||
        { show_log "$RAW/fio/gen-$pat.stderr"; fail "fio through aimfs failed"; }
    unmount_fuse "$GEN/mnt"
    [[ $DAEMON_RC == 0 ]] || { show_log "$lf"; fail "aimfs exited with status $DAEMON_RC"; }
    mkdir -p "$SCRATCH/segs/$pat"
    mv "$j"/*.aimj "$SCRATCH/segs/$pat/" || fail "no segments in $j"
    SEGS[$pat]="$SCRATCH/segs/$pat"
    SEGSTATS[$pat]=$("$PY" "$HELPER" segstats --aimctl "$AIMCTL" "${SEGS[$pat]}") || fail "aimctl dump of the $pat segments failed"
    printf '%s\n' "${SEGSTATS[$pat]}" >"$RAW/segments-$pat.json"
    GROUP[$pat]=$(jq -r .group <<<"${SEGSTATS[$pat]}")
    LAST_LSN[$pat]=$(jq -r .last_lsn <<<"${SEGSTATS[$pat]}")
    local ns wr fl by
    ns=$(jq -r .segments <<<"${SEGSTATS[$pat]}") wr=$(jq -r .writes <<<"${SEGSTATS[$pat]}")
    fl=$(jq -r .flushes <<<"${SEGSTATS[$pat]}") by=$(jq -r .bytes <<<"${SEGSTATS[$pat]}")
    [[ $(jq -r .other_records <<<"${SEGSTATS[$pat]}") == 0 ]] || log "warning: the $pat segments hold records other than WRITE and FLUSH"
    meta "segments:$pat" "$ns segments, $((by / 1048576)) MiB, $wr writes, $fl FLUSH barriers, group ${GROUP[$pat]}, LSN 1..${LAST_LSN[$pat]}"
    meta "fio:gen-$pat" "fio --filename=MNT/vm.raw $args --direct=1 --ioengine=psync (through aimfs, -o $opts)"
    log "  $ns segments, $((by / 1048576)) MiB, $wr writes, $fl barriers"
}
command -v jq >/dev/null || fail "jq not found (apt-get install -y jq)"
has_re 'seq|receive' && make_segments seq "$SEQ_GEN_ARGS"
has_re 'rand' && make_segments rand "$RAND_GEN_ARGS"
rm -rf "$GEN"

# ---------------------------------------------------------------- targets
TGT_FILE_DIR="$SCRATCH/tgt-file"
if has_re 'apply-file'; then
    mkdir -p "$TGT_FILE_DIR"
    log "laying out the file target ($SIZE)"
    fio_bg "$RAW/fio/layout-file.stderr" --name=layout --filename="$TGT_FILE_DIR/vm.raw" --size="$SIZE" \
        --rw=write --bs=1M --direct=1 --ioengine=psync --end_fsync=1 --output=/dev/null ||
        fail "laying out the file target failed"
fi
LOOP=""
if has_re 'apply-loop'; then
    log "laying out the loop device's file ($SIZE) and attaching it"
    fio_bg "$RAW/fio/layout-loop.stderr" --name=layout --filename="$SCRATCH/loop.img" --size="$SIZE" \
        --rw=write --bs=1M --direct=1 --ioengine=psync --end_fsync=1 --output=/dev/null ||
        fail "laying out the loop file failed"
    loop_attach "$SCRATCH/loop.img"
    LOOP=$LOOP_DEV
    meta loop "$LOOP on $SCRATCH/loop.img, direct-io=$LOOP_DIO"
    log "  $LOOP (direct-io=$LOOP_DIO)"
fi
target_of() { # TEST -> path fio writes to
    case $1 in
    apply-file-*) printf '%s' "$TGT_FILE_DIR/vm.raw" ;;
    apply-loop-*) printf '%s' "$LOOP" ;;
    esac
}

# ---------------------------------------------------------------- PKI, nginx
PKI="$SCRATCH/pki"
NGX="$SCRATCH/nginx"
if has_test receive; then
    make_pki "$PKI"
    mkdir -p "$NGX/tmp" "$NGX/inbox" "$NGX/logs"
    cat >"$NGX/nginx.conf" <<EOF
daemon off;
master_process off;
user root;
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log;
events { worker_connections 64; }
http {
  access_log $NGX/logs/access.log;
  client_body_temp_path $NGX/tmp;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    ssl_certificate $PKI/server.pem;
    ssl_certificate_key $PKI/server.key;
    ssl_client_certificate $PKI/ca.pem;
    ssl_verify_client on;
    location /aim/ {
      alias $NGX/inbox/;
      dav_methods PUT;
      create_full_put_path on;
      client_max_body_size 0;
    }
  }
}
EOF
    meta nginx "$(nginx -v 2>&1), one process (master_process off), WebDAV PUT, TLS with the same certificate, client certificates verified; writes the body to a temporary file and renames it, no fsync"
    meta receiver "aim-remote --listen 127.0.0.1:$RECV_PORT with the same certificate, --client-ca, --token-file; writes, fsyncs, validates and renames each segment; segment 1 is withheld so that its applier stays idle (waiting for segment 1)"
fi

# ---------------------------------------------------------------- runs
# After a run, outside the measure: remove what it left and let the
# filesystem finish with it (ext4 mounted with discard trims freed blocks at
# the next journal commit), so the next run does not pay for this one.
settle() { rm -rf "$@"; sync; }

SEQ=0
record() { "$PY" "$HELPER" record "$RUNS" "$@"; }

# One apply by aim-remote: a fresh inbox and state, the group's segments
# hard-linked into a staging directory and renamed into the inbox at t0; t1
# is when aim-remote recorded the last segment applied (after fsync).
apply_aim() { # ROUND TEST PATTERN
    local round=$1 test=$2 pat=$3 run="$SCRATCH/run" tag="r${1}_${2}_aim-remote"
    local -a targs
    rm -rf "$run"
    mkdir -p "$run/inbox" "$run/state" "$run/stage/${GROUP[$pat]}" "$run/tgt"
    ln "${SEGS[$pat]}"/*.aimj "$run/stage/${GROUP[$pat]}/" || fail "cannot hard-link segments"
    case $test in
    apply-file-*) targs=(--target-dir "$TGT_FILE_DIR") ;;
    apply-loop-*) targs=(--target-dir "$run/tgt" --map "vm.raw=$LOOP") ;;
    esac
    start_remote "$RAW/logs/aim-remote.log" --inbox "$run/inbox" --state "$run/state" "${targs[@]}" --status "$REMOTE_STATUS"
    drop_caches
    [[ $COLD == 1 ]] || warm "${SEGS[$pat]}"/*.aimj
    settle_memory
    [[ $round == 1 ]] && profile_start "$REMOTE_PID" "$RAW/prof/$tag.perf"
    local res
    res=$(inns "$PY" "$HELPER" apply-run --stage "$run/stage/${GROUP[$pat]}" --dest "$run/inbox/${GROUP[$pat]}" \
        --state-db "$run/state/remote.db" --group "${GROUP[$pat]}" --lsn "${LAST_LSN[$pat]}" \
        --pid "$REMOTE_PID" --status "$REMOTE_STATUS" --timeout 3600) ||
        { show_log "$RAW/logs/aim-remote.log"; fail "aim-remote did not apply the $pat segments ($test, round $round)"; }
    [[ $round == 1 ]] && profile_stop "$RAW/prof/$tag.perf"
    printf '%s\n' "$res" >"$RAW/apply/$tag.json"
    stop_remote
    settle "$run"
    local secs wb wr
    secs=$(jq -r .seconds <<<"$res") wb=$(jq -r .write_bytes <<<"${SEGSTATS[$pat]}") wr=$(jq -r .writes <<<"${SEGSTATS[$pat]}")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test="$test" side=aim-remote bytes="$wb" ios="$wr" seconds="$secs" \
        mbps="$(jq -n "$wb / $secs / 1e6")" iops="$(jq -n "$wr / $secs")" \
        poll_seconds="$(jq -r .poll_seconds <<<"$res")" note="$(jq -r .segments <<<"${SEGSTATS[$pat]}") segments"
    log "$(printf 'round %d/%d  %-16s %-11s %8.1f MB/s %8.0f IOPS  %.3f s' "$round" "$ROUNDS" "$test" aim-remote \
        "$(jq -n "$wb / $secs / 1e6")" "$(jq -n "$wr / $secs")" "$secs")"
}

# fio writing the same data to the same target: buffered psync (as the
# applier writes), a fsync every N writes as the segments' barriers, and one
# at the end; fio's runtime includes the fsyncs. With "matched": as many
# fsyncs as the applier's durable points (every FLUSH and every segment end),
# evenly spread: not a target, it shows what the extra fsyncs cost.
apply_fio() { # ROUND TEST PATTERN [matched]
    local round=$1 test=$2 pat=$3 tgt side=fio fs args
    [[ ${4:-} == matched ]] && side=fio-matched
    local tag="r${1}_${2}_$side"
    tgt=$(target_of "$test")
    case $pat in
    seq) fs=$SEQ_FSYNC ;;
    rand) fs=$RAND_FSYNC ;;
    esac
    if [[ $side == fio-matched ]]; then
        fs=$(jq -r '[1, ((.writes / .durable_points_max) | round)] | max' <<<"${SEGSTATS[$pat]}")
    fi
    case $pat in
    seq) args="--rw=write --bs=1M --size=$SIZE --fsync=$fs" ;;
    rand) args="--rw=randwrite --bs=4k --size=$SIZE --number_ios=$RAND_IOS --randseed=42 --fsync=$fs" ;;
    esac
    [[ $round == 1 ]] && meta "$side:$test" "fio --filename=$tgt $args --direct=0 --ioengine=psync --end_fsync=1"
    drop_caches
    # The same memory state as aim-remote's run: on this VM, 2 GiB of warm
    # segments in the cache slow fio's buffered writes by a third (the pages
    # the host still backs go to them; see settle_memory).
    [[ $COLD == 1 ]] || warm "${SEGS[$pat]}"/*.aimj
    settle_memory
    # shellcheck disable=SC2086
    FIO_CWD=$SCRATCH fio_bg "$RAW/fio/$tag.stderr" --name=apply --filename="$tgt" $args \
        --direct=0 --ioengine=psync --end_fsync=1 --output-format=json --output="$RAW/fio/$tag.json" ||
        { show_log "$RAW/fio/$tag.stderr"; fail "fio failed ($test, round $round)"; }
    local m b n s
    m=$("$PY" "$HELPER" fio "$RAW/fio/$tag.json") || fail "cannot read $RAW/fio/$tag.json"
    b=$(jq -r .bytes <<<"$m") n=$(jq -r .ios <<<"$m") s=$(jq -r .seconds <<<"$m")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test="$test" side="$side" bytes="$b" ios="$n" seconds="$s" \
        mbps="$(jq -n "$b / $s / 1e6")" iops="$(jq -n "$n / $s")" fsync_every="$fs"
    log "$(printf 'round %d/%d  %-16s %-11s %8.1f MB/s %8.0f IOPS  %.3f s' "$round" "$ROUNDS" "$test" "$side" \
        "$(jq -n "$b / $s / 1e6")" "$(jq -n "$n / $s")" "$s")"
}

# The same curl command against either server: one process, one connection,
# every segment but the first, in order (curl -T "{a,b,...}" URL/ appends each
# file name to the URL).
CURL_FILES=""
upload() { # BASE_URL LOGFILE -> CURL_SECONDS, CURL_BYTES; fails unless every answer is 201
    local url=$1 lf=$2 t0 t1 rc
    t0=$(now_ns)
    (cd "${SEGS[seq]}" && exec nsenter --net="$NS_PATH" curl -sS --cacert "$PKI/ca.pem" \
        --cert "$PKI/client.pem" --key "$PKI/client.key" -H "Authorization: Bearer $(cat "$PKI/token")" \
        -T "{$CURL_FILES}" "$url/${GROUP[seq]}/" -o /dev/null \
        -w '%{stderr}%{http_code} %{size_upload} %{time_total} %{url_effective}\n') >/dev/null 2>"$lf" &
    FIO_PID=$!
    wait "$FIO_PID"
    rc=$?
    FIO_PID=""
    t1=$(now_ns)
    [[ $rc == 0 ]] || { show_log "$lf"; fail "curl failed with status $rc (log: $lf)"; }
    local n bad
    n=$(awk '$1 ~ /^[0-9]+$/' "$lf" | wc -l)
    bad=$(awk '$1 ~ /^[0-9]+$/ && $1 != 201' "$lf" | head -n 3)
    [[ $n == $(wc -w <<<"${CURL_FILES//,/ }") && -z $bad ]] || { show_log "$lf"; fail "not every upload was answered 201 (log: $lf)"; }
    CURL_SECONDS=$(jq -n "($t1 - $t0) / 1e9")
    CURL_BYTES=$(awk '$1 ~ /^[0-9]+$/ {s += $2} END {printf "%.0f\n", s}' "$lf")
}

receive_aim() { # ROUND
    local round=$1 run="$SCRATCH/run" tag="r${1}_receive_aim-remote"
    rm -rf "$run"
    mkdir -p "$run/inbox" "$run/state" "$run/tgt"
    start_remote "$RAW/logs/aim-remote.log" --inbox "$run/inbox" --state "$run/state" --target-dir "$run/tgt" \
        --status "$REMOTE_STATUS" --listen "127.0.0.1:$RECV_PORT" --tls-cert "$PKI/server.pem" \
        --tls-key "$PKI/server.key" --client-ca "$PKI/ca.pem" --token-file "$PKI/token"
    wait_port "$RECV_PORT" "$REMOTE_PID" aim-remote "$RAW/logs/aim-remote.log"
    drop_caches
    [[ $COLD == 1 ]] || warm "${SEGS[seq]}"/*.aimj
    settle_memory
    [[ $round == 1 ]] && profile_start "$REMOTE_PID" "$RAW/prof/$tag.perf"
    upload "https://127.0.0.1:$RECV_PORT/aim" "$RAW/curl/$tag.log"
    [[ $round == 1 ]] && profile_stop "$RAW/prof/$tag.perf"
    local st
    st=$(inns curl -sf "http://$REMOTE_STATUS/status")
    printf '%s\n' "$st" >"$RAW/curl/$tag.status.json"
    [[ $(jq -r '.groups[0].applied_segment // 0' <<<"$st") == 0 ]] || log "warning: aim-remote applied something during the receive test"
    stop_remote
    settle "$run"
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=receive side=aim-remote bytes="$CURL_BYTES" seconds="$CURL_SECONDS" \
        mbps="$(jq -n "$CURL_BYTES / $CURL_SECONDS / 1e6")" \
        bytes_received="$(jq -r .receiver.bytes_received <<<"$st")" accepted="$(jq -r .receiver.accepted <<<"$st")"
    log "$(printf 'round %d/%d  %-16s %-11s %8.1f MB/s  %.3f s' "$round" "$ROUNDS" receive aim-remote \
        "$(jq -n "$CURL_BYTES / $CURL_SECONDS / 1e6")" "$CURL_SECONDS")"
}

receive_nginx() { # ROUND
    local round=$1 tag="r${1}_receive_nginx" pid
    rm -rf "$NGX/inbox" "$NGX/tmp"
    mkdir -p "$NGX/inbox" "$NGX/tmp"
    start_bg nginx "$RAW/logs/nginx.log" "${INNS[@]}" nginx -e "$NGX/logs/error.log" -p "$NGX" -c "$NGX/nginx.conf"
    pid=$BG_PID
    wait_port "$NGINX_PORT" "$pid" nginx "$NGX/logs/error.log"
    drop_caches
    [[ $COLD == 1 ]] || warm "${SEGS[seq]}"/*.aimj
    settle_memory
    upload "https://127.0.0.1:$NGINX_PORT/aim" "$RAW/curl/$tag.log"
    # Not part of the measure: what making nginx's files durable would add.
    local s0 s1
    s0=$(now_ns)
    sync -f "$NGX/inbox/${GROUP[seq]}"
    s1=$(now_ns)
    stop_pid "$pid" 20
    settle "$NGX/inbox" "$NGX/tmp"
    mkdir -p "$NGX/inbox" "$NGX/tmp"
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=receive side=nginx bytes="$CURL_BYTES" seconds="$CURL_SECONDS" \
        mbps="$(jq -n "$CURL_BYTES / $CURL_SECONDS / 1e6")" sync_after_seconds="$(jq -n "($s1 - $s0) / 1e9")"
    log "$(printf 'round %d/%d  %-16s %-11s %8.1f MB/s  %.3f s (+ %.3f s for sync -f)' "$round" "$ROUNDS" receive nginx \
        "$(jq -n "$CURL_BYTES / $CURL_SECONDS / 1e6")" "$CURL_SECONDS" "$(jq -n "($s1 - $s0) / 1e9")")"
}

if has_test receive; then
    nseg=$(jq -r .segments <<<"${SEGSTATS[seq]}")
    ((nseg >= 2)) || fail "the receive test needs at least 2 segments; raise --size"
    CURL_FILES=$(jq -r '.files[1:] | join(",")' <<<"${SEGSTATS[seq]}")
    meta curl_command "cd SEGDIR && curl -sS --cacert ca.pem --cert client.pem --key client.key -H 'Authorization: Bearer TOKEN' -T '{<segments 2..$nseg>}' https://127.0.0.1:PORT/aim/GROUP/ -o /dev/null"
fi

[[ $PROFILE == 1 ]] && mkdir -p "$RAW/prof"
log "${#TESTS[@]} tests x $ROUNDS rounds (apply: aim-remote, fio$([[ $MATCHED == 1 ]] && echo ", fio-matched"); receive: aim-remote, nginx)"
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TESTS[@]}"; do
        # Alternate: aim-remote first in odd rounds, the baseline first in even ones.
        if [[ $t == receive ]]; then
            sides=(receive_aim receive_nginx)
        else
            pat=${t##*-}
            sides=("apply_aim $t $pat" "apply_fio $t $pat")
            [[ $MATCHED == 1 ]] && sides+=("apply_fio $t $pat matched")
        fi
        # Rotate the order from round to round: aim-remote first in round 1,
        # the baseline first in round 2, ...
        n=${#sides[@]}
        rot=()
        for ((k = 0; k < n; k++)); do rot+=("${sides[$(((k + r - 1) % n))]}"); done
        sides=("${rot[@]}")
        for s in "${sides[@]}"; do
            # shellcheck disable=SC2086
            set -- $s
            "$1" "$r" "${@:2}"
        done
    done
done
meta loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" "$HELPER" report --kind remote --raw "$RAW" --md "$OUT" --json "$OUT_JSON" || fail "report generation failed"
log "report: $OUT (numbers: $OUT_JSON, raw: $RAW/)"
