#!/usr/bin/env bash
# resync-bench.sh - aimfs's resynchronisation (docs/RESYNC.md) to aim-remote
# over HTTPS on loopback (issue 6):
#   initial  initial sync of a sparse image (25 % allocated, scattered extents)
#            to an empty target: time to in sync against the transport's
#            shipping rate of the same bytes (aimctl ship), bytes on the wire
#            against the allocated bytes (holes must not travel as data)
#   compare  initial sync onto a pre-seeded replica of which 1 % was changed
#            behind aimfs's back: block-hash comparison, only the differing
#            blocks shipped; against rsync --inplace --no-whole-file (daemon)
# See bench/README.md.
#
#   sudo bench/resync-bench.sh [--quick] [--tests initial,compare] [--rounds N] ...
#
# Needs root (drop_caches, FUSE, network namespaces), fio, curl, rsync,
# fusermount3, ip, nsenter, jq, cmp and /usr/bin/python3. Every process it
# starts is stopped by PID, every mount and both namespaces undone and the
# scratch directory removed, on exit, on error and on Ctrl-C.

set -uo pipefail

PROG=resync-bench
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
CMDLINE=$(cmdline_of resync-bench.sh "$@")
ALL_TESTS="initial compare"

usage() {
    cat <<EOF
usage: sudo $0 [options]

  --build DIR         build to measure (default: $(default_build))
  --dir DIR           create the scratch directory inside DIR (default /var/tmp)
  --rounds N          rounds; medians are reported (default 3; --quick 1)
  --tests LIST        comma-separated subset of: ${ALL_TESTS// /,}
  --image-size SIZE   image of both tests (default 4G; --quick 512M)
  --alloc-pct P       initial: percent of the image allocated, random data in
                      extents of 1-16 MiB (default 25); the shipping baseline
                      ships a journal of as many bytes of writes
  --change-pct P      compare: percent of the replica changed, in extents of
                      64 KiB-1 MiB aligned to 64 KiB (default 1)
  --interval S        poll interval of aimfs's /status (default 0.1)
  --cold              drop caches before each measured step and do not read
                      the files back (default: warm, both files read once)
  --aimfs-opts OPTS   extra -o options for every aimfs mount (default: none)
  --profile           perf record aimfs during round 1 of each test (raw/prof/)
  --quick             smoke test: --rounds 1 --image-size 512M
  --out FILE          markdown report (default bench/results/resync-<date>.md);
                      next to it FILE.json and FILE.raw/
  -h, --help          this text
EOF
}

# ---------------------------------------------------------------- options
BUILD_ARG=$(default_build) BASE_DIR=/var/tmp OUT="" QUICK=0 PROFILE=0 COLD=0
OPT_ROUNDS="" OPT_IMG="" ALLOC_PCT=25 CHANGE_PCT=1 POLL_INTERVAL=0.1 AIMFS_OPTS=""
TESTS_ARG=${ALL_TESTS// /,}
while [[ $# -gt 0 ]]; do
    opt=$1
    if [[ $opt == --*=* ]]; then set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; opt=$1; fi
    case $opt in
    --build) need_arg "$@"; BUILD_ARG=$2; shift 2 ;;
    --dir) need_arg "$@"; BASE_DIR=$2; shift 2 ;;
    --rounds) need_arg "$@"; OPT_ROUNDS=$2; shift 2 ;;
    --tests) need_arg "$@"; TESTS_ARG=$2; shift 2 ;;
    --image-size) need_arg "$@"; OPT_IMG=$2; shift 2 ;;
    --alloc-pct) need_arg "$@"; ALLOC_PCT=$2; shift 2 ;;
    --change-pct) need_arg "$@"; CHANGE_PCT=$2; shift 2 ;;
    --interval) need_arg "$@"; POLL_INTERVAL=$2; shift 2 ;;
    --cold) COLD=1; shift ;;
    --aimfs-opts) need_arg "$@"; AIMFS_OPTS=$2; shift 2 ;;
    --profile) PROFILE=1; shift ;;
    --quick) QUICK=1; shift ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $opt" ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    ROUNDS=${OPT_ROUNDS:-1} IMG_SIZE=${OPT_IMG:-512M}
else
    ROUNDS=${OPT_ROUNDS:-3} IMG_SIZE=${OPT_IMG:-4G}
fi
[[ $IMG_SIZE =~ ^[1-9][0-9]*[KkMmGgTt]?$ ]] || die "--image-size must look like 512M or 4G, not '$IMG_SIZE'"
IMG_BYTES=$(size_bytes "$IMG_SIZE")
((IMG_BYTES % (16 << 20) == 0)) || die "--image-size must be a multiple of 16M"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
for v in ALLOC_PCT CHANGE_PCT POLL_INTERVAL; do
    [[ ${!v} =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--${v,,} must be a number"
done
awk -v a="$ALLOC_PCT" -v c="$CHANGE_PCT" 'BEGIN { exit !(a > 0 && a <= 90 && c > 0 && c <= 50) }' ||
    die "--alloc-pct must be in (0, 90] and --change-pct in (0, 50]"
# Allocated bytes of the initial test (whole MiB), changed bytes of the
# compare test (whole 64 KiB blocks): exactly what aimbench.py layout writes.
ALLOC_BYTES=$(awk -v b="$IMG_BYTES" -v p="$ALLOC_PCT" 'BEGIN { printf "%d", int(b * p / 100 / 1048576) * 1048576 }')
CHANGE_BYTES=$(awk -v b="$IMG_BYTES" -v p="$CHANGE_PCT" 'BEGIN { printf "%d", int(b * p / 100 / 65536) * 65536 }')
((ALLOC_BYTES >= 1048576)) || die "--alloc-pct $ALLOC_PCT of $IMG_SIZE is less than 1 MiB"
((CHANGE_BYTES >= 65536)) || die "--change-pct $CHANGE_PCT of $IMG_SIZE is less than one 64 KiB block"
# What the HASH records of the whole image weigh in the segments: one record
# per 1 MiB chunk (64-byte header, u32 block size + u32 0), 8 bytes per 64 KiB block.
HASH_BYTES=$(((IMG_BYTES + 65535) / 65536 * 8 + (IMG_BYTES + 1048575) / 1048576 * (64 + 8)))
select_tests

# ---------------------------------------------------------------- preflight
[[ $EUID -eq 0 ]] || die "needs root (drop_caches, FUSE, network namespace): run 'sudo $0 $*'"
[[ -x $PY ]] || die "$PY not found"
for c in fio curl jq fusermount3 mountpoint findmnt numfmt ip nsenter cmp; do
    command -v "$c" >/dev/null || die "'$c' not found (apt-get install -y fio curl jq fuse3 iproute2 util-linux diffutils)"
done
has_test compare && { command -v rsync >/dev/null || die "rsync not found (apt-get install -y rsync), or leave out the compare test"; }
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"
find_build "$BUILD_ARG"
[[ -d $BASE_DIR ]] || die "--dir $BASE_DIR is not a directory"

# A second namespace for the pollers (see pollns_create); undone before lib's cleanup.
POLLNS=""
resync_cleanup() {
    local rc=$?
    if [[ -n $POLLNS ]]; then
        ip netns del "$POLLNS" 2>/dev/null || log "warning: could not delete network namespace $POLLNS"
        POLLNS=""
    fi
    (exit "$rc")
    bench_cleanup
}
trap resync_cleanup EXIT
trap 'log "interrupted (SIGINT)"; partial_report; exit 130' INT
trap 'log "terminated (SIGTERM)"; partial_report; exit 143' TERM

make_scratch_and_output resync fio logs initial compare
[[ $PROFILE == 1 ]] && mkdir -p "$RAW/prof"

partial_report() {
    if [[ -s $RUNS ]]; then
        "$PY" "$HELPER" report --kind resync --raw "$RAW" --md "$OUT" --json "$OUT_JSON" --partial >/dev/null 2>&1 &&
            log "partial report of the completed runs: $OUT"
    fi
}
fail() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    partial_report
    exit 1
}

# ---------------------------------------------------------------- network
# aimfs, aim-remote, aimctl ship, rsync and its daemon run in the private
# namespace NETNS (lib.sh), whose loopback counters are the bytes on the wire.
# The status listeners of aimfs and aim-remote listen on a veth address of
# NETNS instead of 127.0.0.1, and everything that asks them (the 100 ms
# poller, the script's curl) runs in a second namespace POLLNS at the other
# end of the veth: polling never touches NETNS's loopback, so its counters
# hold only aimfs <-> aim-remote (segments, the mismatch reports) or rsync.
pollns_create() {
    POLLNS="aimbench-$$-poll"
    ip netns add "$POLLNS" || { POLLNS=""; die "cannot create a network namespace (ip netns add)"; }
    ip -n "$POLLNS" link set lo up &&
        ip -n "$NETNS" link add aimb0 type veth peer name aimb1 netns "$POLLNS" &&
        ip -n "$NETNS" addr add 10.254.0.1/30 dev aimb0 && ip -n "$NETNS" link set aimb0 up &&
        ip -n "$POLLNS" addr add 10.254.0.2/30 dev aimb1 && ip -n "$POLLNS" link set aimb1 up ||
        die "cannot connect the poller namespace to $NETNS (veth)"
    # nsenter execs the program (no fork): "${INPOLL[@]}" CMD & gives CMD's PID
    INPOLL=(nsenter --net="/run/netns/$POLLNS")
}
INPOLL=()
inpoll() { "${INPOLL[@]}" "$@"; }

netns_create
pollns_create
REMOTE_STATUS=10.254.0.1:9381
AIMFS_STATUS=10.254.0.1:9380
RECV_PORT=9443
RSYNC_PORT=8730
PKI="$SCRATCH/pki"
make_pki "$PKI"
# (start_remote in lib.sh waits for aim-remote's status listener from inside
# NETNS: a local address there, and before anything is counted.)

meta_machine
meta rounds "$ROUNDS"
meta tests "${TESTS[*]}"
meta rsync "$(rsync --version | head -n1)"
meta network "private network namespace $NETNS: aimfs, aim-remote, aimctl ship, rsync and its daemon; its loopback counters (/proc/net/dev lo tx) are the bytes on the wire: every byte of IP/TCP/TLS/HTTP both ways. The status listeners (aimfs $AIMFS_STATUS, aim-remote $REMOTE_STATUS) are on a veth to a second namespace $POLLNS where the pollers run, so polling is not counted"
meta tls "aim-remote --listen 127.0.0.1:$RECV_PORT, server certificate from scripts/mkpki.sh, client certificates required (--client-ca) and a bearer token; aimfs's destination: ca_file, cert_file, key_file, token_file, otherwise defaults (no compression, no rate cap)"
meta caches "$([[ $COLD == 1 ]] && echo "cold: sync + drop_caches before each measured step (--cold)" || echo "warm: sync + drop_caches, then the files each side reads are read once (cat) before each measured step")"
[[ -n $AIMFS_OPTS ]] && meta aimfs_opts "$AIMFS_OPTS"

need=$((IMG_BYTES * 3 + ALLOC_BYTES * 5 + (4 << 30)))
has_test compare || need=$((ALLOC_BYTES * 6 + (4 << 30)))
avail=$(($(stat -f -c '%a*%S' "$SCRATCH")))
((avail >= need)) || fail "not enough space in $SCRATCH: $((avail >> 20)) MiB free, need about $((need >> 20)) MiB"
log "scratch $SCRATCH ($(findmnt -no FSTYPE -T "$SCRATCH")), results $OUT"

SEQ=0
record() { "$PY" "$HELPER" record "$RUNS" "$@"; }
j() { jq -r "$1" <<<"$2"; }
rstatus() { inpoll curl -sf "http://$REMOTE_STATUS/status"; }
sstatus() { inpoll curl -sf "http://$AIMFS_STATUS/status"; }
prepare_cache() { # FILES... : the same starting point for every measured step
    drop_caches
    [[ $COLD == 1 ]] || warm "$@"
    settle_memory
}
cleanup_dir() { # DIR : delete what a run left, outside the measure
    rm -rf "$1"
    sync
}

dest_conf() { # FILE : aimfs's config, one destination, TLS + token, defaults otherwise
    {
        printf '[aimfs]\nstatus = %s\n' "$AIMFS_STATUS"
        [[ -n $AIMFS_OPTS ]] && tr ',' '\n' <<<"$AIMFS_OPTS" | sed 's/=/ = /'
        printf '\n[destination dr1]\nurl = https://127.0.0.1:%s/aim\n' "$RECV_PORT"
        printf 'ca_file = %s\ncert_file = %s\nkey_file = %s\ntoken_file = %s\n' \
            "$PKI/ca.pem" "$PKI/client.pem" "$PKI/client.key" "$PKI/token"
    } >"$1"
}
ship_conf() { # FILE : the same destination for aimctl ship
    {
        printf '[destination dr1]\nurl = https://127.0.0.1:%s/aim\n' "$RECV_PORT"
        printf 'ca_file = %s\ncert_file = %s\nkey_file = %s\ntoken_file = %s\n' \
            "$PKI/ca.pem" "$PKI/client.pem" "$PKI/client.key" "$PKI/token"
    } >"$1"
}

# aim-remote with its HTTPS receiver; a fresh inbox and state under DIR.
remote_up() { # DIR [EXTRA ARGS...]  (TGT_DIR= the target directory, default DIR/tgt)
    local d=$1
    shift
    mkdir -p "$d/inbox" "$d/state" "${TGT_DIR:-$d/tgt}"
    start_remote "$RAW/logs/aim-remote.log" --inbox "$d/inbox" --state "$d/state" --target-dir "${TGT_DIR:-$d/tgt}" \
        --status "$REMOTE_STATUS" --listen "127.0.0.1:$RECV_PORT" --tls-cert "$PKI/server.pem" \
        --tls-key "$PKI/server.key" --client-ca "$PKI/ca.pem" --token-file "$PKI/token" "$@"
    wait_port "$RECV_PORT" "$REMOTE_PID" aim-remote "$RAW/logs/aim-remote.log"
}

# One measured sync: mounts aimfs (a fresh journal) over BACKING with the
# destination, polls its /status from POLLNS until the destination is in
# sync, then waits until aim-remote has applied the head LSN (its state DB).
# sync_run TAG TESTDIR BACKING MNT JOURNAL REMOTEDIR -> SYNC_JSON, WIRE, T0
SYNC_JSON="" WIRE="" T0=""
sync_run() {
    local tag=$1 test=$2 backing=$3 mnt=$4 jdir=$5 rdir=$6 lf="$RAW/logs/aimfs-$2.log" c0 c1 waiter rc round
    round=${tag#r}
    round=${round%%-*}
    dest_conf "$SCRATCH/aimfs-$test.conf"
    mkdir -p "$jdir"
    c0=$(lo_tx_bytes)
    T0=$(now_ns)
    mount_aimfs "$lf" -o "config=$SCRATCH/aimfs-$test.conf,journal=$jdir" "$backing" "$mnt"
    local apid=$MNT_PID
    "${INPOLL[@]}" "$PY" "$HELPER" wait-sync --status "$AIMFS_STATUS" --dest dr1 --state-db "$rdir/state/remote.db" \
        --out "$RAW/$test/$tag.polls.jsonl" --t0 "$T0" --interval "$POLL_INTERVAL" --timeout 3600 \
        --pid "$apid" --pid "$REMOTE_PID" >"$RAW/$test/$tag.sync.json" 2>"$RAW/$test/$tag.sync.err" &
    waiter=$!
    BG[$waiter]=wait-sync
    [[ $round == 1 ]] && profile_start "$apid" "$RAW/prof/$test-aimfs.perf"
    wait "$waiter"
    rc=$?
    unset 'BG[$waiter]'
    c1=$(lo_tx_bytes)
    [[ $round == 1 ]] && profile_stop "$RAW/prof/$test-aimfs.perf"
    if [[ $rc != 0 ]]; then
        show_log "$RAW/$test/$tag.sync.err"
        show_log "$lf"
        show_log "$RAW/logs/aim-remote.log"
        fail "the destination did not get in sync ($test, $tag)"
    fi
    WIRE=$((c1 - c0))
    SYNC_JSON=$(cat "$RAW/$test/$tag.sync.json")
    sstatus >"$RAW/$test/$tag.source-status.json"
    rstatus >"$RAW/$test/$tag.remote-status.json"
    unmount_fuse "$mnt"
    [[ $DAEMON_RC == 0 ]] || { show_log "$lf"; fail "aimfs exited with status $DAEMON_RC"; }
    stop_remote
    grep -h 'in sync:\|differ after comparison\|resynchronising' "$lf" | tail -n 3 >"$RAW/$test/$tag.aimfs-log.txt" || true
}

# "start 0.2 s > copying 1.2 s > comparing 0.3 s > ..." from wait-sync's
# phases (start: aimfs starting until its first /status answer); and the
# seconds of the first copying pass (hashes), comparing, the rest (data).
phases_note() { j '["start \((.first_answer_ns - .t0_ns) / 1e7 | round / 100) s"] + [.phases[] | select(.phase != "in_sync") | "\(.phase | sub("^syncing/"; "")) \(.seconds * 100 | round / 100) s"] | join(" > ")' "$1"; }
phase_secs() { # JSON WHICH(hash|compare|copy)
    case $2 in
    hash) j '[.phases[] | select(.phase == "syncing/copying")][0].seconds // 0' "$1" ;;
    compare) j '[.phases[] | select(.phase == "syncing/comparing") | .seconds] | add // 0' "$1" ;;
    copy) j '[.phases[] | select(.phase == "syncing/copying")][1:] | map(.seconds) | add // 0' "$1" ;;
    esac
}

# ================================================================ initial
# A sparse image of IMG_SIZE with ALLOC_PCT % of it random data in scattered
# extents (1-16 MiB, 1 MiB aligned), made before aimfs is ever mounted; each
# round mounts aimfs with a fresh journal over it with a new destination whose
# target directory is empty. Baseline: a journal of ALLOC_BYTES of writes
# (fio through aimfs without destinations) shipped with aimctl ship.
IN="$SCRATCH/initial"
initial_setup() {
    mkdir -p "$IN/backing" "$IN/mnt"
    log "initial: making a $IMG_SIZE sparse image with $((ALLOC_BYTES >> 20)) MiB of random data in 1-16 MiB extents"
    "$PY" "$HELPER" layout --create --size "$IMG_BYTES" --bytes "$ALLOC_BYTES" --min $((1 << 20)) --max $((16 << 20)) \
        --align $((1 << 20)) --seed 4242 --list "$IN/backing/img.raw" >"$RAW/initial/image.json" ||
        fail "cannot make the image"
    local im
    im=$(cat "$RAW/initial/image.json")
    [[ $(j .data_bytes_seek "$im") == "$ALLOC_BYTES" ]] ||
        fail "the image holds $(j .data_bytes_seek "$im") bytes of data (SEEK_DATA), not $ALLOC_BYTES: does $(findmnt -no FSTYPE -T "$SCRATCH") keep holes?"
    sync
    meta initial_image "$IMG_SIZE sparse, $ALLOC_BYTES bytes ($ALLOC_PCT %) of os.urandom data in $(j .extents "$im") extents of $(($(j .min_extent "$im") >> 20))-$(($(j .max_extent "$im") >> 20)) MiB (median $(j '.median_extent / 1048576' "$im") MiB), 1 MiB aligned, scattered (aimbench.py layout --seed 4242; raw/initial/image.json); made before the first mount"
    meta initial_aimfs "per round: a fresh journal and a new destination (aim-remote with a fresh inbox, state and an empty target directory); t0 = just before aimfs starts; end = the later of (the first /status answer, polled every $POLL_INTERVAL s, with \"in_sync\": true and the destination in sync) and (the time aim-remote recorded the source's head LSN applied, state DB). Throughput = allocated bytes / (end - t0). Bytes = NETNS loopback bytes from t0 to the end"
}

SHIP_J="$SCRATCH/ship/journal"
make_ship_journal() {
    local b="$SCRATCH/ship/backing" m="$SCRATCH/ship/mnt" lf="$RAW/logs/aimfs-ship.log" st
    mkdir -p "$b" "$m" "$SHIP_J"
    truncate -s "$ALLOC_BYTES" "$b/vm.raw"
    mount_aimfs "$lf" -o "journal=$SHIP_J,status=$AIMFS_STATUS${AIMFS_OPTS:+,$AIMFS_OPTS}" "$b" "$m"
    log "initial: writing a journal of $((ALLOC_BYTES >> 20)) MiB of writes through aimfs for the shipping baseline (fio, sequential 1 MiB, O_DIRECT)"
    fio_bg "$RAW/fio/ship-gen.stderr" --name=gen --filename="$m/vm.raw" --rw=write --bs=1M --size="$ALLOC_BYTES" \
        --direct=1 --ioengine=psync --output-format=json --output="$RAW/fio/ship-gen.json" ||
        { show_log "$RAW/fio/ship-gen.stderr"; fail "fio through aimfs failed"; }
    unmount_fuse "$m"
    [[ $DAEMON_RC == 0 ]] || { show_log "$lf"; fail "aimfs exited with status $DAEMON_RC"; }
    rm -f "$b/vm.raw"
    st=$("$PY" "$HELPER" segstats --aimctl "$AIMCTL" "$SHIP_J") || fail "aimctl dump failed"
    printf '%s\n' "$st" >"$RAW/initial/ship-segments.json"
    SHIP_GROUP=$(j .group "$st") SHIP_SEG_BYTES=$(j .bytes "$st") SHIP_NSEG=$(j .segments "$st")
    SHIP_LAST=$(j .last_lsn "$st") SHIP_WBYTES=$(j .write_bytes "$st")
    ship_conf "$SCRATCH/ship/ship.conf"
    meta initial_ship "baseline: aimctl ship --config ship.conf JOURNAL (the transport aimfs runs, same destination) of a journal of $SHIP_NSEG segments, $SHIP_SEG_BYTES bytes holding $SHIP_WBYTES bytes of writes (fio --rw=write --bs=1M --size=$ALLOC_BYTES --direct=1 through aimfs without destinations); per round a copy (hard links) and a fresh aim-remote with an empty target; segments read into the page cache (as the initial test's image). Time = start of aimctl ship to the time aim-remote recorded the last LSN applied (as for aimfs); throughput = bytes of writes / time; the time aimctl ship exits (all acknowledged) is ack_seconds"
    log "  $SHIP_NSEG segments, $((SHIP_SEG_BYTES >> 20)) MiB"
}

initial_aimfs() { # ROUND
    local round=$1 tag="r$1" d="$IN/r" st rs secs mbps tgt_alloc
    rm -rf "$d"
    mkdir -p "$d/tgt"
    TGT_DIR="$d/tgt" remote_up "$d/remote"
    prepare_cache "$IN/backing/img.raw"
    sync_run "$tag" initial "$IN/backing" "$IN/mnt" "$d/j" "$d/remote"
    st=$SYNC_JSON
    secs=$(j .seconds "$st")
    mbps=$(jq -n "$ALLOC_BYTES / $secs / 1e6")
    rs=$(cat "$RAW/initial/$tag.remote-status.json")
    cmp "$IN/backing/img.raw" "$d/tgt/img.raw" || fail "the replica differs from the source (initial, round $round)"
    tgt_alloc=$(($(stat -c '%b*%B' "$d/tgt/img.raw")))
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=initial side=aimfs seconds="$secs" mbps="$mbps" wire_bytes="$WIRE" \
        changed="$ALLOC_BYTES" allocated="$ALLOC_BYTES" \
        startup_seconds="$(j '(.first_answer_ns - .t0_ns) / 1e9' "$st")" \
        in_sync_seconds="$(j .in_sync_seconds "$st")" applied_after_in_sync="$(j .applied_after_in_sync "$st")" \
        hash_seconds="$(phase_secs "$st" hash)" compare_seconds="$(phase_secs "$st" compare)" \
        copy_seconds="$(phase_secs "$st" copy)" saved_bytes="$(j '.last_sync.saved_bytes // 0' "$st")" \
        payload_bytes="$(j .receiver.bytes_received "$rs")" target_allocated="$tgt_alloc" \
        polls="$(j .polls "$st")" note="$(phases_note "$st")"
    log "$(printf 'round %d/%d  initial %-11s in sync after %.2f s: %.1f MB/s; %.1f MB on the wire (%.4fx the %.1f MB allocated); %s' \
        "$round" "$ROUNDS" aimfs "$secs" "$mbps" "$(jq -n "$WIRE / 1e6")" "$(jq -n "$WIRE / $ALLOC_BYTES")" \
        "$(jq -n "$ALLOC_BYTES / 1e6")" "$(phases_note "$st")")"
    cleanup_dir "$d"
}

initial_ship() { # ROUND
    local round=$1 run="$SCRATCH/ship/run" tag="r${1}-ship" t0 t1 ta rc c0 c1 res pid
    rm -rf "$run"
    mkdir -p "$run/j"
    ln "$SHIP_J"/*.aimj "$run/j/" || fail "cannot hard-link the journal"
    find "$SHIP_J" -maxdepth 1 -type f ! -name '*.aimj' -exec cp -p {} "$run/j/" \;
    remote_up "$run"
    prepare_cache "$run/j"/*.aimj
    c0=$(lo_tx_bytes)
    t0=$(now_ns)
    "${INNS[@]}" "$AIMCTL" ship --config "$SCRATCH/ship/ship.conf" --timeout 30m "$run/j" \
        >"$RAW/initial/$tag.out" 2>"$RAW/initial/$tag.err" &
    pid=$!
    BG[$pid]="aimctl ship"
    wait "$pid"
    rc=$?
    ta=$(now_ns)
    unset 'BG[$pid]'
    [[ $rc == 0 ]] || { show_log "$RAW/initial/$tag.err"; fail "aimctl ship failed with status $rc"; }
    res=$("$PY" "$HELPER" wait-applied --state-db "$run/state/remote.db" --group "$SHIP_GROUP" \
        --lsn "$SHIP_LAST" --pid "$REMOTE_PID" --timeout 600 --interval 0.005) ||
        fail "aim-remote did not apply the shipped journal"
    c1=$(lo_tx_bytes)
    t1=$(j .last_applied_ns "$res")
    ((t1 > ta)) || t1=$ta
    local st secs mbps
    st=$(rstatus)
    printf '%s\n' "$st" >"$RAW/initial/$tag.remote-status.json"
    stop_remote
    secs=$(jq -n "($t1 - $t0) / 1e9")
    mbps=$(jq -n "$SHIP_WBYTES / $secs / 1e6")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=initial side=aimctl-ship seconds="$secs" mbps="$mbps" \
        ack_seconds="$(jq -n "($ta - $t0) / 1e9")" bytes="$SHIP_SEG_BYTES" changed="$SHIP_WBYTES" \
        wire_bytes="$((c1 - c0))" payload_bytes="$(j .receiver.bytes_received "$st")"
    log "$(printf 'round %d/%d  initial %-11s %.1f MB/s: %.2f s to applied (%.2f s to acknowledged); %.1f MB on the wire' \
        "$round" "$ROUNDS" aimctl-ship "$mbps" "$secs" "$(jq -n "($ta - $t0) / 1e9")" "$(jq -n "($c1 - $c0) / 1e6")")"
    cleanup_dir "$run"
}

# ================================================================ compare
# An image of IMG_SIZE from /dev/urandom (every block allocated), the replica
# (aim-remote's target) and rsync's copy made equal to it once. Each round
# changes CHANGE_PCT % of the replica and of rsync's copy, the same random
# bytes at the same places (extents of 64 KiB-1 MiB, 64 KiB aligned, seed
# 7000+ROUND), behind aimfs's back: aim-remote is not running, aimfs is not
# mounted. Then aimfs (fresh journal, new destination: an initial sync, which
# compares block hashes) and rsync --inplace --no-whole-file bring their copy
# back to the source, in alternating order; both are cmp'ed afterwards.
CD="$SCRATCH/compare"
compare_setup() {
    mkdir -p "$CD/backing" "$CD/mnt" "$CD/replica" "$CD/rsyncdst"
    log "compare: making a $IMG_SIZE image of random content and two copies of it"
    head -c "$IMG_BYTES" /dev/urandom >"$CD/backing/img.raw" || fail "cannot make the image"
    cp "$CD/backing/img.raw" "$CD/replica/img.raw" && cp "$CD/backing/img.raw" "$CD/rsyncdst/img.raw" ||
        fail "cannot copy the image"
    sync
    cat >"$CD/rsyncd.conf" <<EOF
pid file = $CD/rsyncd.pid
use chroot = false
[bench]
path = $CD/rsyncdst
read only = false
uid = root
gid = root
EOF
    start_bg rsyncd "$RAW/logs/rsyncd.log" "${INNS[@]}" rsync --daemon --no-detach --config="$CD/rsyncd.conf" \
        --address=127.0.0.1 --port="$RSYNC_PORT" --log-file="$RAW/logs/rsyncd.log"
    RSYNCD=$BG_PID
    wait_port "$RSYNC_PORT" "$RSYNCD" "rsync --daemon" "$RAW/logs/rsyncd.log"
    meta compare_image "$IMG_SIZE of /dev/urandom, fully allocated; replica and rsync's copy made with cp. Per round the same $CHANGE_BYTES bytes ($CHANGE_PCT %) of both copies are overwritten with the same os.urandom bytes, in extents of 64 KiB-1 MiB aligned to 64 KiB (aimbench.py layout --seed 7000+ROUND; raw/compare/rN.changes.json), directly in the files, while aim-remote is stopped and aimfs unmounted: the replica changed behind aimfs's back"
    meta compare_aimfs "aimfs (fresh journal, a new destination: initial sync with block hashes) over the unchanged source; aim-remote (fresh inbox and state) on the changed replica; time and bytes as in the initial test. Reference for the bytes: differing bytes ($CHANGE_BYTES) + hashes ($HASH_BYTES: 8 bytes per 64 KiB block, and a 64-byte record header + 8 bytes per 1 MiB HASH record)"
    meta compare_rsync "rsync --inplace --no-whole-file --stats BACKING/img.raw rsync://127.0.0.1:$RSYNC_PORT/bench/img.raw (daemon in NETNS, module = rsync's copy; no ssh, no fsync); time = rsync's wall time; bytes = NETNS loopback bytes during rsync"
}

compare_aimfs() { # ROUND
    local round=$1 tag="r$1" d="$CD/r" st rs secs
    rm -rf "$d"
    TGT_DIR="$CD/replica" remote_up "$d/remote"
    prepare_cache "$CD/backing/img.raw" "$CD/replica/img.raw"
    sync_run "$tag" compare "$CD/backing" "$CD/mnt" "$d/j" "$d/remote"
    st=$SYNC_JSON
    secs=$(j .seconds "$st")
    rs=$(cat "$RAW/compare/$tag.remote-status.json")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=compare side=aimfs seconds="$secs" wire_bytes="$WIRE" \
        changed="$((CHANGE_BYTES + HASH_BYTES))" differing="$CHANGE_BYTES" hash_bytes="$HASH_BYTES" \
        startup_seconds="$(j '(.first_answer_ns - .t0_ns) / 1e9' "$st")" \
        in_sync_seconds="$(j .in_sync_seconds "$st")" applied_after_in_sync="$(j .applied_after_in_sync "$st")" \
        hash_seconds="$(phase_secs "$st" hash)" compare_seconds="$(phase_secs "$st" compare)" \
        copy_seconds="$(phase_secs "$st" copy)" saved_bytes="$(j '.last_sync.saved_bytes // 0' "$st")" \
        payload_bytes="$(j .receiver.bytes_received "$rs")" polls="$(j .polls "$st")" note="$(phases_note "$st")"
    log "$(printf 'round %d/%d  compare %-6s in sync after %.2f s; %.2f MB on the wire (%.3fx the %.2f MB differing + hashes); %s' \
        "$round" "$ROUNDS" aimfs "$secs" "$(jq -n "$WIRE / 1e6")" "$(jq -n "$WIRE / ($CHANGE_BYTES + $HASH_BYTES)")" \
        "$(jq -n "($CHANGE_BYTES + $HASH_BYTES) / 1e6")" "$(phases_note "$st")")"
    cleanup_dir "$d"
}

compare_rsync() { # ROUND
    local round=$1 tag="r$1" t0 t1 rc c0 c1 s sent recv
    prepare_cache "$CD/backing/img.raw" "$CD/rsyncdst/img.raw"
    c0=$(lo_tx_bytes)
    t0=$(now_ns)
    "${INNS[@]}" rsync --inplace --no-whole-file --stats "$CD/backing/img.raw" \
        "rsync://127.0.0.1:$RSYNC_PORT/bench/img.raw" >"$RAW/compare/$tag.rsync.out" 2>&1 &
    FIO_PID=$!
    wait "$FIO_PID"
    rc=$?
    FIO_PID=""
    t1=$(now_ns)
    c1=$(lo_tx_bytes)
    [[ $rc == 0 ]] || { show_log "$RAW/compare/$tag.rsync.out"; fail "rsync failed with status $rc"; }
    s=$(jq -n "($t1 - $t0) / 1e9")
    sent=$(awk -F': ' '/^Total bytes sent/ {gsub(/,/, "", $2); print $2}' "$RAW/compare/$tag.rsync.out")
    recv=$(awk -F': ' '/^Total bytes received/ {gsub(/,/, "", $2); print $2}' "$RAW/compare/$tag.rsync.out")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=compare side=rsync seconds="$s" wire_bytes="$((c1 - c0))" \
        changed="$((CHANGE_BYTES + HASH_BYTES))" differing="$CHANGE_BYTES" rsync_sent="${sent:-0}" rsync_received="${recv:-0}"
    log "$(printf 'round %d/%d  compare %-6s %.2f s; %.2f MB on the wire (rsync --stats: sent %s, received %s)' \
        "$round" "$ROUNDS" rsync "$s" "$(jq -n "($c1 - $c0) / 1e6")" "${sent:-?}" "${recv:-?}")"
    sync
}

compare_round() { # ROUND
    local round=$1
    "$PY" "$HELPER" layout --size "$IMG_BYTES" --bytes "$CHANGE_BYTES" --min 65536 --max $((1 << 20)) --align 65536 \
        --seed $((7000 + round)) --list "$CD/replica/img.raw" "$CD/rsyncdst/img.raw" >"$RAW/compare/r$round.changes.json" ||
        fail "cannot change the replica"
    cmp -s "$CD/replica/img.raw" "$CD/rsyncdst/img.raw" || fail "the replica and rsync's copy differ before round $round"
    sync
    if ((round % 2)); then compare_aimfs "$round"; compare_rsync "$round"; else compare_rsync "$round"; compare_aimfs "$round"; fi
    cmp "$CD/backing/img.raw" "$CD/replica/img.raw" || fail "the aimfs replica differs from the source after round $round"
    cmp "$CD/backing/img.raw" "$CD/rsyncdst/img.raw" || fail "rsync's copy differs from the source after round $round"
}

# ================================================================ go
log "${#TESTS[@]} tests x $ROUNDS rounds, image $IMG_SIZE"
if has_test initial; then
    make_ship_journal
    initial_setup
    for ((r = 1; r <= ROUNDS; r++)); do
        # Alternate: aimfs first in odd rounds, aimctl ship first in even ones.
        if ((r % 2)); then initial_aimfs "$r"; initial_ship "$r"; else initial_ship "$r"; initial_aimfs "$r"; fi
    done
    cleanup_dir "$SCRATCH/ship"
    cleanup_dir "$IN"
fi
if has_test compare; then
    compare_setup
    for ((r = 1; r <= ROUNDS; r++)); do compare_round "$r"; done
    stop_pid "$RSYNCD" 10
    cleanup_dir "$CD"
fi
meta loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" "$HELPER" report --kind resync --raw "$RAW" --md "$OUT" --json "$OUT_JSON" || fail "report generation failed"
log "report: $OUT (numbers: $OUT_JSON, raw: $RAW/)"
