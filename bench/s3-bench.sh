#!/usr/bin/env bash
# s3-bench.sh - object-store destinations against a throwaway single-node Ceph
# RGW (tests/ceph_rgw.py), everything in a private network namespace:
#   upload  aimfs's transport (aimctl ship, type = s3) against the curl
#           command-line tool (--aws-sigv4) uploading the same segment files to
#           the same RGW, one process and one connection each, in order
#   latency while fio writes RATE into a mount shipping to a bucket, per segment:
#           sealed -> acknowledged (the transport's own) and acknowledged ->
#           applied by `aim-remote --pull --pull-interval 1s`
#   apply   one puller applying 20 groups (20 mounts, one bucket) against one
#           group holding as many bytes: aggregate pull + apply throughput
#   backlog a backlog of small segments (a mount with segment_size 256K):
#           `aim-remote --pull` catching up from nothing and `aimctl restore`
#           to its last LSN, against curl downloading the same objects, eight
#           at a time (--parallel) and one after the other (--next)
# See bench/README.md.
#
#   sudo bench/s3-bench.sh [--quick] [--tests upload,latency,apply,backlog] [--rounds N] ...
#
# Needs root (drop_caches, FUSE, a network namespace), ceph-mon, ceph-osd,
# radosgw (scripts/install-deps.sh), fio, curl, jq, fusermount3, ip, nsenter
# and /usr/bin/python3.  Every process it starts is stopped by PID (the Ceph
# daemons through tests/ceph_rgw.py stop), every mount and the namespace undone
# and the scratch directory removed, on exit, on error and on Ctrl-C.

set -uo pipefail

PROG=s3-bench
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
CMDLINE=$(cmdline_of s3-bench.sh "$@")
ALL_TESTS="upload latency apply backlog"
S3PY="$SCRIPT_DIR/s3bench.py"
CEPHPY="$REPO_DIR/tests/ceph_rgw.py"

usage() {
    cat <<EOF
usage: sudo $0 [options]

  --build DIR         build to measure (default: $(default_build))
  --dir DIR           create the scratch directory inside DIR (default /var/tmp)
  --rounds N          rounds; medians are reported (default 3; --quick 1)
  --tests LIST        comma-separated subset of: ${ALL_TESTS// /,}
  --ship-size SIZE    journal uploaded per run (default 1G; --quick 256M)
  --lat-rate RATE     fio --rate into the mount of the latency test (default 50m)
  --lat-runtime S     seconds of writing per round (default 30; --quick 10)
  --poll-interval D   aim-remote --pull-interval (default 1s)
  --groups N          mounts (groups) of the apply test (default 20)
  --group-size SIZE   bytes written into each of them (default 32M; --quick 8M)
  --backlog-size SIZE bytes written (64 KiB random writes) into the backlog's
                      256 KiB segments (default 256M; --quick 64M)
  --quick             smoke test: --rounds 1 --ship-size 256M --lat-runtime 10
                      --group-size 8M --backlog-size 64M
  --out FILE          markdown report (default bench/results/s3-<date>.md); next
                      to it FILE.json and FILE.raw/
  -h, --help          this text
EOF
}

BUILD_ARG=$(default_build) BASE_DIR=/var/tmp OUT="" QUICK=0 OPT_ROUNDS="" OPT_SHIP="" OPT_LAT_RT=""
OPT_GSIZE="" OPT_BSIZE="" LAT_RATE=50m POLL=1s NGROUPS=20 TESTS_ARG=${ALL_TESTS// /,}
while [[ $# -gt 0 ]]; do
    opt=$1
    if [[ $opt == --*=* ]]; then set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; opt=$1; fi
    case $opt in
    --build) need_arg "$@"; BUILD_ARG=$2; shift 2 ;;
    --dir) need_arg "$@"; BASE_DIR=$2; shift 2 ;;
    --rounds) need_arg "$@"; OPT_ROUNDS=$2; shift 2 ;;
    --tests) need_arg "$@"; TESTS_ARG=$2; shift 2 ;;
    --ship-size) need_arg "$@"; OPT_SHIP=$2; shift 2 ;;
    --lat-rate) need_arg "$@"; LAT_RATE=$2; shift 2 ;;
    --lat-runtime) need_arg "$@"; OPT_LAT_RT=$2; shift 2 ;;
    --poll-interval) need_arg "$@"; POLL=$2; shift 2 ;;
    --groups) need_arg "$@"; NGROUPS=$2; shift 2 ;;
    --group-size) need_arg "$@"; OPT_GSIZE=$2; shift 2 ;;
    --backlog-size) need_arg "$@"; OPT_BSIZE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $opt" ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    ROUNDS=${OPT_ROUNDS:-1} SHIP_SIZE=${OPT_SHIP:-256M} LAT_RT=${OPT_LAT_RT:-10} GSIZE=${OPT_GSIZE:-8M}
    BSIZE=${OPT_BSIZE:-64M}
else
    ROUNDS=${OPT_ROUNDS:-3} SHIP_SIZE=${OPT_SHIP:-1G} LAT_RT=${OPT_LAT_RT:-30} GSIZE=${OPT_GSIZE:-32M}
    BSIZE=${OPT_BSIZE:-256M}
fi
for v in SHIP_SIZE GSIZE BSIZE; do
    [[ ${!v} =~ ^[1-9][0-9]*[KkMmGgTt]?$ ]] || die "${v,,} must look like 256M or 2G, not '${!v}'"
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $NGROUPS =~ ^[1-9][0-9]*$ ]] || die "--groups must be a positive integer"
GBYTES=$(size_bytes "$GSIZE")
ONE_SIZE=$(((GBYTES * NGROUPS) >> 20))M
select_tests

[[ $EUID -eq 0 ]] || die "needs root (drop_caches, FUSE, network namespace): run 'sudo $0 $*'"
for c in fio curl jq fusermount3 mountpoint findmnt numfmt ip nsenter ceph-mon ceph-osd radosgw; do
    command -v "$c" >/dev/null || die "'$c' not found (sudo scripts/install-deps.sh)"
done
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"
find_build "$BUILD_ARG"
[[ -d $BASE_DIR ]] || die "--dir $BASE_DIR is not a directory"

CEPH_DIR=""
# The cluster is thrown away after each round (SIGKILL by PID: a memstore OSD
# would otherwise write everything it holds to disk as it stops): deleting
# objects instead confused memstore's space accounting (tests/ceph_rgw.py).
ceph_stop() {
    [[ -n $CEPH_DIR ]] || return 0
    log "killing the Ceph cluster (radosgw, OSD, mon, by PID)"
    "$PY" "$CEPHPY" kill "$CEPH_DIR" || log "warning: a Ceph daemon did not die"
    rm -rf "$CEPH_DIR"
    CEPH_DIR=""
}
trap 'rc=$?; ceph_stop; (exit $rc); bench_cleanup' EXIT
trap 'log "interrupted (SIGINT)"; exit 130' INT
trap 'log "terminated (SIGTERM)"; exit 143' TERM

make_scratch_and_output s3 logs upload latency apply backlog fio
fail() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
netns_create
AIMFS_STATUS=127.0.0.1:9380
REMOTE_STATUS=127.0.0.1:9381
meta_machine
meta rounds "$ROUNDS"
meta tests "${TESTS[*]}"
meta shared "the machine is shared with other engineers' builds and tests: figures are from one run, with whatever else ran meanwhile (load average at start above)"

# ---------------------------------------------------------------- the store
CEPH_N=0
ceph_start() {
    local envs k v
    CEPH_N=$((CEPH_N + 1))
    CEPH_DIR="$SCRATCH/ceph$CEPH_N"
    mkdir -p "$CEPH_DIR"
    log "starting a single-node Ceph cluster (memstore OSD) and radosgw in the namespace"
    envs=$(inns env AIM_MEMSTORE_BYTES=$((8 << 30)) "$PY" "$CEPHPY" start "$CEPH_DIR") ||
        fail "the Ceph cluster did not start (logs: $CEPH_DIR/log)"
    while IFS='=' read -r k v; do
        [[ -n $k ]] && export "$k=$v"
    done <<<"$envs"
    EP=$AIM_S3_ENDPOINT
    [[ $CEPH_N == 1 ]] && meta ceph "$(ceph-mon --version | cut -d' ' -f1-3): one mon, one OSD (memstore, 8 GiB), radosgw beast, no cephx, pool size 1, rados osd op timeout 5; started in ${CEPH_STARTED_S} s; a fresh cluster for each round's upload and latency runs, and one for the apply runs"
    printf '%s' "$AWS_ACCESS_KEY_ID" >"$SCRATCH/ak"
    printf '%s' "$AWS_SECRET_ACCESS_KEY" >"$SCRATCH/sk"
}
s3py() { inns "$PY" "$S3PY" "$@"; }
j() { jq -r "$1" <<<"$2"; }
SEQ=0
record() { SEQ=$((SEQ + 1)); "$PY" "$S3PY" record "$RUNS" seq="$SEQ" "$@"; }
sstatus() { inns curl -sf "http://$AIMFS_STATUS/status"; }

# s3_conf FILE URL [EXTRA LINES]: an [aimfs] status line and one s3 destination
s3_conf() {
    local f=$1 url=$2
    shift 2
    {
        printf '[aimfs]\nstatus = %s\n\n[destination store]\ntype = s3\nurl = %s\n' "$AIMFS_STATUS" "$url"
        printf 'access_key_file = %s\nsecret_key_file = %s\n' "$SCRATCH/ak" "$SCRATCH/sk"
        local l
        for l in "$@"; do printf '%s\n' "$l"; done
    } >"$f"
}

# Waits until a mount's only destination is in sync with everything.
wait_source_sync() {
    local deadline=$((SECONDS + 600)) st
    while ((SECONDS < deadline)); do
        st=$(sstatus) && [[ $(j '.in_sync and (.destinations[0].acked_lsn == .head_lsn)' "$st") == true ]] && return 0
        sleep 0.1
    done
    fail "the source did not get in sync: $(sstatus)"
}

# time_bg LABEL OUT CMD...: runs CMD in the namespace, in the background
# (stopped by PID on exit), its output in OUT, -> SECS (its wall time), or
# fails with its output.
time_bg() {
    local label=$1 out=$2 t0 t1 rc
    shift 2
    t0=$(now_ns)
    # bash's `times` after the command: its second line is the CPU the
    # command (the shell's children) used, user and system (CPU_S)
    "${INNS[@]}" bash -c '"$@"; rc=$?; times >"$0.cpu"; exit $rc' "$out" "$@" >"$out" 2>&1 &
    FIO_PID=$!
    BG[$FIO_PID]=$label
    wait "$FIO_PID"
    rc=$?
    unset 'BG[$FIO_PID]'
    FIO_PID=""
    t1=$(now_ns)
    [[ $rc == 0 ]] || { show_log "$out"; fail "$label failed"; }
    SECS=$(jq -n "($t1 - $t0) / 1e9")
    CPU_S=$(sed -n 2p "$out.cpu" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] } printf "%.2f", n }')
}

# ================================================================ upload
UJ="$SCRATCH/upload/journal"
upload_setup() {
    local b="$SCRATCH/upload/backing" m="$SCRATCH/upload/mnt" lf="$RAW/logs/aimfs-upload.log"
    mkdir -p "$b" "$m" "$UJ"
    truncate -s "$SHIP_SIZE" "$b/vm.raw"
    mount_aimfs "$lf" -o "journal=$UJ,status=off" "$b" "$m"
    log "upload: writing a $SHIP_SIZE journal through aimfs (fio, sequential 1 MiB, O_DIRECT)"
    fio_bg "$RAW/fio/upload-gen.stderr" --name=gen --filename="$m/vm.raw" --rw=write --bs=1M \
        --size="$SHIP_SIZE" --direct=1 --ioengine=psync >/dev/null || fail "fio through aimfs failed"
    unmount_fuse "$m"
    [[ $DAEMON_RC == 0 ]] || { show_log "$lf"; fail "aimfs exited with status $DAEMON_RC"; }
    UBYTES=$(cat "$UJ"/*.aimj | wc -c)
    UNSEG=$(ls "$UJ"/*.aimj | wc -l)
    meta upload_journal "$UNSEG segments, $UBYTES bytes (fio --rw=write --bs=1M --size=$SHIP_SIZE --direct=1 through aimfs, default segment_size 64M)"
    meta upload_aimfs "aimctl ship --config s3.conf JOURNAL (type = s3, compress off, default multipart_size 64M): SHA-256 of each segment, PUT with x-amz-content-sha256, then PUT of HEAD; one connection"
    meta upload_curl "one curl process: -T SEG --aws-sigv4 aws:amz:us-east-1:s3 -H 'x-amz-content-sha256: HASH' URL, --next per segment (one connection, in order); the hashes taken beforehand and timed apart (curl+hash adds them)"
}

upload_round() { # ROUND
    local round=$1 run="$SCRATCH/upload/run" t0 t1 rc s out hash_s
    # aimfs: a copy of the journal (aimctl ship records what it shipped)
    rm -rf "$run" && mkdir -p "$run/j"
    ln "$UJ"/*.aimj "$run/j/" || fail "cannot link the journal's segments"
    find "$UJ" -maxdepth 1 -type f ! -name '*.aimj' -exec cp -p {} "$run/j/" \;
    s3py bucket "$EP" "up-aimfs-$round" create >/dev/null || fail "cannot create a bucket"
    s3_conf "$run/s3.conf" "$EP/up-aimfs-$round/b" "compress = off"
    sed -i '1,3d' "$run/s3.conf" # aimctl ship takes destinations only
    drop_caches; cat "$run/j"/*.aimj >/dev/null; settle_memory
    time_bg "aimctl ship" "$RAW/upload/r$round-aimctl.out" \
        "$AIMCTL" ship --config "$run/s3.conf" --timeout 10m "$run/j"
    s=$SECS
    record round="$round" test=upload side=aimctl-ship bytes="$UBYTES" seconds="$s" mbps="$(jq -n "$UBYTES / $s / 1e6")" cpu_seconds="$CPU_S"
    log "$(printf 'round %d/%d  upload aimctl ship %7.1f MB/s' "$round" "$ROUNDS" "$(jq -n "$UBYTES / $s / 1e6")")"
    # curl
    s3py bucket "$EP" "up-curl-$round" create >/dev/null || fail "cannot create a bucket"
    drop_caches; cat "$UJ"/*.aimj >/dev/null
    out=$(s3py curl-args "$EP" "up-curl-$round" b "$UJ" "$run/curl.args") || fail "cannot hash the segments"
    hash_s=$(j .hash_seconds "$out")
    settle_memory
    local -a args
    mapfile -d '' args <"$run/curl.args"
    t0=$(now_ns)
    inns curl "${args[@]}" >"$RAW/upload/r$round-curl.out" 2>&1 &
    FIO_PID=$!
    wait "$FIO_PID"
    rc=$?
    FIO_PID=""
    t1=$(now_ns)
    [[ $rc == 0 && $(grep -c '^200 ' "$RAW/upload/r$round-curl.out") == "$UNSEG" ]] ||
        { show_log "$RAW/upload/r$round-curl.out"; fail "curl did not upload every segment"; }
    s=$(jq -n "($t1 - $t0) / 1e9")
    record round="$round" test=upload side=curl bytes="$UBYTES" seconds="$s" mbps="$(jq -n "$UBYTES / $s / 1e6")"
    record round="$round" test=upload side=curl+hash bytes="$UBYTES" seconds="$(jq -n "$s + $hash_s")" \
        mbps="$(jq -n "$UBYTES / ($s + $hash_s) / 1e6")"
    log "$(printf 'round %d/%d  upload curl        %7.1f MB/s (%.1f MB/s counting its hashing)' "$round" "$ROUNDS" \
        "$(jq -n "$UBYTES / $s / 1e6")" "$(jq -n "$UBYTES / ($s + $hash_s) / 1e6")")"
}

# ================================================================ latency
latency_round() { # ROUND
    local round=$1 d="$SCRATCH/latency/r$1" lf="$RAW/logs/aimfs-latency.log" rlf="$RAW/logs/aim-remote-latency.log"
    local group head res
    mkdir -p "$d/backing" "$d/mnt" "$d/j" "$d/inbox" "$d/state" "$d/tgt"
    truncate -s 1G "$d/backing/vm.raw"
    s3py bucket "$EP" "lat-$round" create >/dev/null || fail "cannot create a bucket"
    s3_conf "$d/aimfs.conf" "$EP/lat-$round/b"
    start_remote "$rlf" --inbox "$d/inbox" --state "$d/state" --target-dir "$d/tgt" --status "$REMOTE_STATUS" \
        --pull "$EP/lat-$round/b" --access-key-file "$SCRATCH/ak" --secret-key-file "$SCRATCH/sk" --pull-interval "$POLL"
    mount_aimfs "$lf" -o "config=$d/aimfs.conf,journal=$d/j" "$d/backing" "$d/mnt"
    wait_source_sync
    group=$(j .group "$(sstatus)")
    fio_bg "$RAW/fio/latency-r$round.stderr" --name=lat --filename="$d/mnt/vm.raw" --rw=write --bs=64k --direct=1 \
        --ioengine=libaio --iodepth=4 --rate="$LAT_RATE" --time_based --runtime="$LAT_RT" --size=1G >/dev/null ||
        fail "fio into the mount failed"
    wait_source_sync
    head=$(j .head_lsn "$(sstatus)")
    inns "$PY" "$S3PY" wait-groups --status "$REMOTE_STATUS" --expect "{\"$group\": $head}" --timeout 300 >/dev/null ||
        { show_log "$rlf"; fail "the puller did not apply everything"; }
    unmount_fuse "$d/mnt"
    stop_remote
    res=$("$PY" "$S3PY" latency --catalog "$d/j/catalog.db" --state-db "$d/state/remote.db" --group "$group") ||
        fail "cannot compute the latencies"
    record round="$round" test=latency side=pull segments="$(j .segments "$res")" pull_p50="$(j .pull.p50 "$res")" \
        pull_p99="$(j .pull.p99 "$res")" pull_max="$(j .pull.max "$res")" ship_p50="$(j .ship.p50 "$res")" \
        ship_p99="$(j .ship.p99 "$res")"
    log "$(printf 'round %d/%d  latency  %d segments: acked -> applied p50 %.2f s p99 %.2f s; sealed -> acked p50 %.2f s p99 %.2f s' \
        "$round" "$ROUNDS" "$(j .segments "$res")" "$(j .pull.p50 "$res")" "$(j .pull.p99 "$res")" \
        "$(j .ship.p50 "$res")" "$(j .ship.p99 "$res")")"
    rm -rf "$d"
}

# ================================================================ apply
# A mount per group, writing SIZE into its own image and shipping it to
# BUCKET/p, then unmounted.
fill_group() { # NAME BUCKET SIZE
    local d="$SCRATCH/apply/src-$1" lf="$RAW/logs/aimfs-apply.log"
    mkdir -p "$d/backing" "$d/mnt" "$d/j"
    s3_conf "$d/aimfs.conf" "$EP/$2/p"
    mount_aimfs "$lf" -o "config=$d/aimfs.conf,journal=$d/j" "$d/backing" "$d/mnt"
    fio_bg "$RAW/fio/apply-$1.stderr" --name=fill --filename="$d/mnt/$1.raw" --rw=write --bs=1M --size="$3" \
        --direct=1 --ioengine=psync >/dev/null || fail "fio into mount $1 failed"
    wait_source_sync
    unmount_fuse "$d/mnt"
    rm -rf "$d"
}

apply_setup() {
    log "apply: $NGROUPS mounts writing $GSIZE each into one bucket, one mount writing $ONE_SIZE into another"
    s3py bucket "$EP" "apply-many" create >/dev/null && s3py bucket "$EP" "apply-one" create >/dev/null ||
        fail "cannot create the buckets"
    for ((i = 0; i < NGROUPS; i++)); do fill_group "vm$i" apply-many "$GSIZE"; done
    fill_group one apply-one "$ONE_SIZE"
    EXPECT_MANY=$(s3py head "$EP" apply-many p | jq -c 'map_values(.lsn)')
    EXPECT_ONE=$(s3py head "$EP" apply-one p | jq -c 'map_values(.lsn)')
    [[ $(j 'length' "$EXPECT_MANY") == "$NGROUPS" ]] || fail "expected $NGROUPS groups in the bucket: $EXPECT_MANY"
    meta apply "$NGROUPS groups ($NGROUPS mounts, fio --rw=write --bs=1M --size=$GSIZE --direct=1 each) in one bucket, against one group written with --size=$ONE_SIZE; a fresh aim-remote --pull URL --pull-interval $POLL per run (fresh inbox, state, targets), timed from its start until /status shows every group at its HEAD's LSN; MB/s = bytes applied (bytes_written) / time"
}

apply_round() { # ROUND
    local round=$1 side bucket expect d res ticks
    for side in 20-groups 1-group; do
        if [[ $side == 20-groups ]]; then bucket=apply-many expect=$EXPECT_MANY; else bucket=apply-one expect=$EXPECT_ONE; fi
        d="$SCRATCH/apply/pull"
        rm -rf "$d" && mkdir -p "$d/inbox" "$d/state" "$d/tgt"
        drop_caches
        settle_memory
        start_remote "$RAW/logs/aim-remote-apply.log" --inbox "$d/inbox" --state "$d/state" --target-dir "$d/tgt" \
            --status "$REMOTE_STATUS" --pull "$EP/$bucket/p" --access-key-file "$SCRATCH/ak" \
            --secret-key-file "$SCRATCH/sk" --pull-interval "$POLL"
        res=$(inns "$PY" "$S3PY" wait-groups --status "$REMOTE_STATUS" --expect "$expect" --timeout 900) ||
            { show_log "$RAW/logs/aim-remote-apply.log"; fail "the puller did not apply everything ($side)"; }
        ticks=$(cpu_ticks "$REMOTE_PID")
        stop_remote
        record round="$round" test=apply side="$side" groups="$(j .groups "$res")" bytes="$(j .bytes "$res")" \
            seconds="$(j .seconds "$res")" mbps="$(j .mbps "$res")" \
            remote_cpu_seconds="$(jq -n "$ticks / $CLK_TCK")"
        log "$(printf 'round %d/%d  apply  %-9s %7.1f MB/s (%d groups, %.1f s)' "$round" "$ROUNDS" "$side" \
            "$(j .mbps "$res")" "$(j .groups "$res")" "$(j .seconds "$res")")"
        rm -rf "$d"
    done
}

# ================================================================ backlog
backlog_setup() {
    local d="$SCRATCH/backlog/src" lf="$RAW/logs/aimfs-backlog.log" st
    mkdir -p "$d/backing" "$d/mnt" "$d/j"
    truncate -s 1G "$d/backing/vm.raw"
    s3py bucket "$EP" backlog create >/dev/null || fail "cannot create a bucket"
    s3_conf "$d/aimfs.conf" "$EP/backlog/p"
    mount_aimfs "$lf" -o "config=$d/aimfs.conf,journal=$d/j,segment_size=256K" "$d/backing" "$d/mnt"
    log "backlog: writing $BSIZE (64 KiB random writes) into 256 KiB segments, shipped to a bucket"
    fio_bg "$RAW/fio/backlog-fill.stderr" --name=fill --filename="$d/mnt/vm.raw" --rw=randwrite --bs=64k \
        --size=1G --io_size="$BSIZE" --direct=1 --ioengine=psync --randrepeat=0 >/dev/null ||
        fail "fio into the backlog's mount failed"
    wait_source_sync
    st=$(sstatus)
    BACKLOG_GROUP=$(j .group "$st")
    BACKLOG_LSN=$(j .head_lsn "$st")
    unmount_fuse "$d/mnt"
    rm -rf "$d"
    BACKLOG_EXPECT=$(s3py head "$EP" backlog p | jq -c 'map_values(.lsn)')
    BACKLOG_SEGS=$(s3py head "$EP" backlog p | jq -r 'to_entries[0].value.segment')
    s3py curl-get-args "$EP" backlog "p/$BACKLOG_GROUP" "$SCRATCH/backlog/dl" "$SCRATCH/backlog/curl-seq.args" >/dev/null &&
        s3py curl-get-args --parallel 8 "$EP" backlog "p/$BACKLOG_GROUP" "$SCRATCH/backlog/dl" \
            "$SCRATCH/backlog/curl-par.args" >/dev/null || fail "cannot list the backlog's segments"
    meta backlog "$BACKLOG_SEGS segments of 256 KiB in one group (a mount with segment_size=256K, fio --rw=randwrite --bs=64k --io_size=$BSIZE --direct=1, shipped to the bucket); each round, in turn: a fresh aim-remote --pull URL --pull-interval $POLL timed from its start until /status shows the group at HEAD's LSN; aimctl restore --until HEAD's LSN into an empty directory; one curl process GETting every segment object (--aws-sigv4) into files, --parallel --parallel-max 8, and one with --next (one connection, in order); the page cache dropped and settled before each"
}

backlog_round() { # ROUND
    local round=$1 d="$SCRATCH/backlog/run" res side
    local -a args
    rm -rf "$d" && mkdir -p "$d/inbox" "$d/state" "$d/tgt"
    drop_caches; settle_memory
    start_remote "$RAW/logs/aim-remote-backlog.log" --inbox "$d/inbox" --state "$d/state" --target-dir "$d/tgt" \
        --status "$REMOTE_STATUS" --pull "$EP/backlog/p" --access-key-file "$SCRATCH/ak" \
        --secret-key-file "$SCRATCH/sk" --pull-interval "$POLL"
    res=$(inns "$PY" "$S3PY" wait-groups --status "$REMOTE_STATUS" --expect "$BACKLOG_EXPECT" --timeout 900) ||
        { show_log "$RAW/logs/aim-remote-backlog.log"; fail "the puller did not apply the backlog"; }
    stop_remote
    record round="$round" test=backlog side=aim-remote segments="$BACKLOG_SEGS" seconds="$(j .seconds "$res")" \
        segps="$(jq -n "$BACKLOG_SEGS / $(j .seconds "$res")")"
    rm -rf "$d" && mkdir -p "$d"
    drop_caches; settle_memory
    time_bg "aimctl restore" "$RAW/backlog/restore-r$round.out" "$AIMCTL" restore --from "$EP/backlog/p" --until "$BACKLOG_LSN" --target-dir "$d/tgt" \
        --access-key-file "$SCRATCH/ak" --secret-key-file "$SCRATCH/sk"
    record round="$round" test=backlog side=aimctl-restore segments="$BACKLOG_SEGS" seconds="$SECS" \
        segps="$(jq -n "$BACKLOG_SEGS / $SECS")"
    for side in curl-8 curl-1; do
        rm -rf "$SCRATCH/backlog/dl" && mkdir -p "$SCRATCH/backlog/dl"
        drop_caches; settle_memory
        if [[ $side == curl-8 ]]; then mapfile -d '' args <"$SCRATCH/backlog/curl-par.args"
        else mapfile -d '' args <"$SCRATCH/backlog/curl-seq.args"; fi
        time_bg "$side" "$RAW/backlog/$side-r$round.out" curl "${args[@]}"
        [[ $(grep -c '^200 ' "$RAW/backlog/$side-r$round.out") == "$BACKLOG_SEGS" ]] ||
            { show_log "$RAW/backlog/$side-r$round.out"; fail "$side did not download every segment"; }
        record round="$round" test=backlog side="$side" segments="$BACKLOG_SEGS" seconds="$SECS" \
            segps="$(jq -n "$BACKLOG_SEGS / $SECS")"
    done
    log "$(printf 'round %d/%d  backlog of %d segments: aim-remote --pull %.1f s, aimctl restore %.1f s, curl x8 %.1f s, curl x1 %.1f s' \
        "$round" "$ROUNDS" "$BACKLOG_SEGS" "$(j .seconds "$res")" \
        "$(jq -r "select(.test == \"backlog\" and .round == $round and .side == \"aimctl-restore\") | .seconds" "$RUNS")" \
        "$(jq -r "select(.test == \"backlog\" and .round == $round and .side == \"curl-8\") | .seconds" "$RUNS")" \
        "$SECS")"
    rm -rf "$d"
}

has_test upload && upload_setup
if has_test upload || has_test latency; then
    for ((r = 1; r <= ROUNDS; r++)); do
        ceph_start
        has_test upload && upload_round "$r"
        has_test latency && latency_round "$r"
        ceph_stop
    done
fi
if has_test apply; then
    ceph_start
    apply_setup
    for ((r = 1; r <= ROUNDS; r++)); do apply_round "$r"; done
    ceph_stop
fi
if has_test backlog; then
    ceph_start
    backlog_setup
    for ((r = 1; r <= ROUNDS; r++)); do backlog_round "$r"; done
fi
meta loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" "$S3PY" report --raw "$RAW" --md "$OUT" --json "$OUT_JSON" || fail "cannot write the report"
log "report: $OUT"
