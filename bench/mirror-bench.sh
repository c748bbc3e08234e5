#!/usr/bin/env bash
# mirror-bench.sh - aimfs mirroring to aim-remote over HTTPS on loopback:
#   ship   shipping throughput of aimfs's transport (aimctl ship) against the
#          curl command-line tool uploading the same segments to the same receiver
#   rpo    recovery point per write while fio writes 50 MB/s into the mount
#   delta  bytes on the wire and time to converge after changing 1 % of an image
#          that is already mirrored, against rsync (daemon mode) of the same change
# See bench/README.md.
#
#   sudo bench/mirror-bench.sh [--quick] [--tests ship,rpo,delta] [--rounds N] ...
#
# Needs root (drop_caches, FUSE, a network namespace), fio, curl, rsync,
# fusermount3, ip, nsenter, jq and /usr/bin/python3. Every process it starts is
# stopped by PID, every mount and the namespace undone and the scratch directory
# removed, on exit, on error and on Ctrl-C.

set -uo pipefail

PROG=mirror-bench
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
CMDLINE=$(cmdline_of mirror-bench.sh "$@")
ALL_TESTS="ship rpo delta"

usage() {
    cat <<EOF
usage: sudo $0 [options]

  --build DIR         build to measure (default: $(default_build))
  --dir DIR           create the scratch directory inside DIR (default /var/tmp)
  --rounds N          rounds; medians are reported (default 3; --quick 1)
  --tests LIST        comma-separated subset of: ${ALL_TESTS// /,}
  --ship-size SIZE    journal shipped per run (default 2G; --quick 256M)
  --rpo-rate RATE     fio --rate into the mount (default 50m)
  --rpo-runtime S     seconds of writing per round (default 60; --quick 15)
  --rpo-bs SIZE       fio block size of the recovery point test (default 64k)
  --poll-interval S   /status poll interval of the recovery point test (default 0.05)
  --image-size SIZE   image of the delta test (default 2G; --quick 256M)
  --change-pct P      percent of the image changed by random 4 KiB writes per
                      round (default 1)
  --warm-rsync        read both copies into the page cache before rsync (default:
                      caches dropped before each measured step, rsync reads cold)
  --aimfs-opts OPTS   extra -o options for every aimfs mount (default: none)
  --profile           perf record the transport / aimfs during round 1 (raw/prof/)
  --quick             smoke test: --rounds 1 --ship-size 256M --rpo-runtime 15
                      --image-size 256M
  --out FILE          markdown report (default bench/results/mirror-<date>.md); next
                      to it FILE.json and FILE.raw/
  -h, --help          this text
EOF
}

# ---------------------------------------------------------------- options
BUILD_ARG=$(default_build) BASE_DIR=/var/tmp OUT="" QUICK=0 PROFILE=0 WARM_RSYNC=0
OPT_ROUNDS="" OPT_SHIP="" OPT_RPO_RT="" OPT_IMG="" RPO_RATE=50m RPO_BS=64k POLL_INTERVAL=0.05
CHANGE_PCT=1 AIMFS_OPTS="" TESTS_ARG=${ALL_TESTS// /,}
while [[ $# -gt 0 ]]; do
    opt=$1
    if [[ $opt == --*=* ]]; then set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; opt=$1; fi
    case $opt in
    --build) need_arg "$@"; BUILD_ARG=$2; shift 2 ;;
    --dir) need_arg "$@"; BASE_DIR=$2; shift 2 ;;
    --rounds) need_arg "$@"; OPT_ROUNDS=$2; shift 2 ;;
    --tests) need_arg "$@"; TESTS_ARG=$2; shift 2 ;;
    --ship-size) need_arg "$@"; OPT_SHIP=$2; shift 2 ;;
    --rpo-rate) need_arg "$@"; RPO_RATE=$2; shift 2 ;;
    --rpo-runtime) need_arg "$@"; OPT_RPO_RT=$2; shift 2 ;;
    --rpo-bs) need_arg "$@"; RPO_BS=$2; shift 2 ;;
    --poll-interval) need_arg "$@"; POLL_INTERVAL=$2; shift 2 ;;
    --image-size) need_arg "$@"; OPT_IMG=$2; shift 2 ;;
    --change-pct) need_arg "$@"; CHANGE_PCT=$2; shift 2 ;;
    --warm-rsync) WARM_RSYNC=1; shift ;;
    --aimfs-opts) need_arg "$@"; AIMFS_OPTS=$2; shift 2 ;;
    --profile) PROFILE=1; shift ;;
    --quick) QUICK=1; shift ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $opt" ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    ROUNDS=${OPT_ROUNDS:-1} SHIP_SIZE=${OPT_SHIP:-256M} RPO_RUNTIME=${OPT_RPO_RT:-15} IMG_SIZE=${OPT_IMG:-256M}
else
    ROUNDS=${OPT_ROUNDS:-3} SHIP_SIZE=${OPT_SHIP:-2G} RPO_RUNTIME=${OPT_RPO_RT:-60} IMG_SIZE=${OPT_IMG:-2G}
fi
for v in SHIP_SIZE IMG_SIZE; do
    [[ ${!v} =~ ^[1-9][0-9]*[KkMmGgTt]?$ ]] || die "${v,,} must look like 256M or 2G, not '${!v}'"
done
SHIP_BYTES=$(size_bytes "$SHIP_SIZE") IMG_BYTES=$(size_bytes "$IMG_SIZE")
((SHIP_BYTES % 1048576 == 0 && IMG_BYTES % 1048576 == 0)) || die "sizes must be multiples of 1M"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $RPO_RUNTIME =~ ^[1-9][0-9]*$ ]] || die "--rpo-runtime must be a positive integer (seconds)"
[[ $CHANGE_PCT =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--change-pct must be a number"
CHANGE_IOS=$(awk -v b="$IMG_BYTES" -v p="$CHANGE_PCT" 'BEGIN { printf "%d", b * p / 100 / 4096 + 0.5 }')
((CHANGE_IOS >= 1)) || die "--change-pct $CHANGE_PCT of $IMG_SIZE is less than one 4 KiB block"
select_tests

# ---------------------------------------------------------------- preflight
[[ $EUID -eq 0 ]] || die "needs root (drop_caches, FUSE, network namespace): run 'sudo $0 $*'"
[[ -x $PY ]] || die "$PY not found"
for c in fio curl jq fusermount3 mountpoint findmnt numfmt ip nsenter cmp; do
    command -v "$c" >/dev/null || die "'$c' not found (apt-get install -y fio curl jq fuse3 iproute2 util-linux)"
done
has_test delta && { command -v rsync >/dev/null || die "rsync not found (apt-get install -y rsync), or leave out the delta test"; }
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"
find_build "$BUILD_ARG"
[[ -d $BASE_DIR ]] || die "--dir $BASE_DIR is not a directory"

trap bench_cleanup EXIT
trap 'log "interrupted (SIGINT)"; partial_report; exit 130' INT
trap 'log "terminated (SIGTERM)"; partial_report; exit 143' TERM

make_scratch_and_output mirror fio logs ship rpo delta
[[ $PROFILE == 1 ]] && mkdir -p "$RAW/prof"

partial_report() {
    if [[ -s $RUNS ]]; then
        "$PY" "$HELPER" report --kind mirror --raw "$RAW" --md "$OUT" --json "$OUT_JSON" --partial >/dev/null 2>&1 &&
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
AIMFS_STATUS=127.0.0.1:9380
RSYNC_PORT=8730
PKI="$SCRATCH/pki"
make_pki "$PKI"
TOKEN=$(cat "$PKI/token")

meta_machine
meta rounds "$ROUNDS"
meta tests "${TESTS[*]}"
meta network "private network namespace $NETNS: aimfs, aim-remote, curl, rsync and the pollers only see its loopback, whose counters count only this benchmark"
meta tls "aim-remote --listen 127.0.0.1:$RECV_PORT, server certificate from scripts/mkpki.sh, client certificates required (--client-ca) and a bearer token"
[[ -n $AIMFS_OPTS ]] && meta aimfs_opts "$AIMFS_OPTS"

need=$((SHIP_BYTES * 3 + IMG_BYTES * 4 + (4 << 30)))
avail=$(($(stat -f -c '%a*%S' "$SCRATCH")))
((avail >= need)) || fail "not enough space in $SCRATCH: $((avail >> 20)) MiB free, need about $((need >> 20)) MiB"
log "scratch $SCRATCH ($(findmnt -no FSTYPE -T "$SCRATCH")), results $OUT"

SEQ=0
record() { "$PY" "$HELPER" record "$RUNS" "$@"; }
j() { jq -r "$1" <<<"$2"; }
rstatus() { inns curl -sf "http://$REMOTE_STATUS/status"; }
sstatus() { inns curl -sf "http://$AIMFS_STATUS/status"; }

# A destination section for aimfs / aimctl ship: TLS verified against the CA,
# client certificate, token; everything else at its default.
# dest_conf FILE aimfs|ship [EXTRA LINES...]  (aimctl ship takes only destinations)
dest_conf() {
    local f=$1 kind=$2
    shift 2
    {
        if [[ $kind == aimfs ]]; then
            printf '[aimfs]\nstatus = %s\n' "$AIMFS_STATUS"
            [[ -n $AIMFS_OPTS ]] && tr ',' '\n' <<<"$AIMFS_OPTS" | sed 's/=/ = /'
            printf '\n'
        fi
        printf '[destination dr1]\nurl = https://127.0.0.1:%s/aim\n' "$RECV_PORT"
        printf 'ca_file = %s\ncert_file = %s\nkey_file = %s\ntoken_file = %s\n' \
            "$PKI/ca.pem" "$PKI/client.pem" "$PKI/client.key" "$PKI/token"
        local l
        for l in "$@"; do printf '%s\n' "$l"; done
    } >"$f"
}

# aim-remote with its HTTPS receiver; a fresh inbox and state under DIR.
remote_up() { # DIR [EXTRA ARGS...]
    local d=$1
    shift
    mkdir -p "$d/inbox" "$d/state" "$d/tgt"
    start_remote "$RAW/logs/aim-remote.log" --inbox "$d/inbox" --state "$d/state" --target-dir "${TGT_DIR:-$d/tgt}" \
        --status "$REMOTE_STATUS" --listen "127.0.0.1:$RECV_PORT" --tls-cert "$PKI/server.pem" \
        --tls-key "$PKI/server.key" --client-ca "$PKI/ca.pem" --token-file "$PKI/token" "$@"
    wait_port "$RECV_PORT" "$REMOTE_PID" aim-remote "$RAW/logs/aim-remote.log"
}

# ================================================================ ship
# A journal of SHIP_SIZE written through aimfs without destinations (fio,
# sequential 1 MiB O_DIRECT), unmounted. Each run ships a copy of it (segments
# hard-linked, catalog copied) to a fresh aim-remote, which applies as they come.
SHIP_J="$SCRATCH/ship/journal"
make_ship_journal() {
    local b="$SCRATCH/ship/backing" m="$SCRATCH/ship/mnt" lf="$RAW/logs/aimfs-ship.log"
    mkdir -p "$b" "$m" "$SHIP_J"
    truncate -s "$SHIP_SIZE" "$b/vm.raw"
    mount_aimfs "$lf" -o "journal=$SHIP_J,status=$AIMFS_STATUS${AIMFS_OPTS:+,$AIMFS_OPTS}" "$b" "$m"
    log "ship: writing a $SHIP_SIZE journal through aimfs (fio, sequential 1 MiB, O_DIRECT)"
    fio_bg "$RAW/fio/ship-gen.stderr" --name=gen --filename="$m/vm.raw" --rw=write --bs=1M --size="$SHIP_SIZE" \
        --direct=1 --ioengine=psync --output-format=json --output="$RAW/fio/ship-gen.json" ||
        { show_log "$RAW/fio/ship-gen.stderr"; fail "fio through aimfs failed"; }
    unmount_fuse "$m"
    [[ $DAEMON_RC == 0 ]] || { show_log "$lf"; fail "aimfs exited with status $DAEMON_RC"; }
    rm -f "$b/vm.raw"
    SHIP_STATS=$("$PY" "$HELPER" segstats --aimctl "$AIMCTL" "$SHIP_J") || fail "aimctl dump failed"
    printf '%s\n' "$SHIP_STATS" >"$RAW/ship/segments.json"
    SHIP_GROUP=$(j .group "$SHIP_STATS") SHIP_SEG_BYTES=$(j .bytes "$SHIP_STATS") SHIP_NSEG=$(j .segments "$SHIP_STATS")
    SHIP_FILES=$(j '.files | join(",")' "$SHIP_STATS")
    meta ship_journal "$SHIP_NSEG segments, $SHIP_SEG_BYTES bytes (fio --rw=write --bs=1M --size=$SHIP_SIZE --direct=1 through aimfs)"
    dest_conf "$SCRATCH/ship/ship.conf" ship "compress = off"
    meta ship_aimfs "aimctl ship --config ship.conf JOURNAL (destination: url https://127.0.0.1:$RECV_PORT/aim, ca_file, cert_file, key_file, token_file, compress = off)"
    meta ship_curl "cd JOURNAL && curl -sS --cacert ca.pem --cert client.pem --key client.key -H 'Authorization: Bearer TOKEN' -T '{<all $SHIP_NSEG segments>}' https://127.0.0.1:$RECV_PORT/aim/GROUP/ -o /dev/null (one process, one connection, in order)"
    meta ship_receiver "a fresh aim-remote per run, applying each segment as it arrives (same for both); segments read into the page cache before each run"
    log "  $SHIP_NSEG segments, $((SHIP_SEG_BYTES >> 20)) MiB"
}

ship_aimctl() { # ROUND
    local round=$1 run="$SCRATCH/ship/run" t0 t1 rc tag="r${1}_aimctl-ship"
    rm -rf "$run"
    mkdir -p "$run/j"
    ln "$SHIP_J"/*.aimj "$run/j/" || fail "cannot hard-link the journal"
    find "$SHIP_J" -maxdepth 1 -type f ! -name '*.aimj' -exec cp -p {} "$run/j/" \;
    remote_up "$run"
    drop_caches
    warm "$run/j"/*.aimj
    t0=$(now_ns)
    "${INNS[@]}" "$AIMCTL" ship --config "$SCRATCH/ship/ship.conf" --timeout 30m "$run/j" \
        >"$RAW/ship/$tag.out" 2>"$RAW/ship/$tag.err" &
    local pid=$!
    BG[$pid]="aimctl ship"
    [[ $round == 1 ]] && profile_start "$pid" "$RAW/prof/$tag.perf"
    wait "$pid"
    rc=$?
    t1=$(now_ns)
    unset 'BG[$pid]'
    [[ $round == 1 ]] && profile_stop "$RAW/prof/$tag.perf"
    [[ $rc == 0 ]] || { show_log "$RAW/ship/$tag.err"; fail "aimctl ship failed with status $rc"; }
    local st
    st=$(rstatus)
    printf '%s\n' "$st" >"$RAW/ship/$tag.remote-status.json"
    stop_remote
    local s
    s=$(jq -n "($t1 - $t0) / 1e9")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=ship side=aimctl-ship bytes="$SHIP_SEG_BYTES" seconds="$s" \
        mbps="$(jq -n "$SHIP_SEG_BYTES / $s / 1e6")" bytes_received="$(j .receiver.bytes_received "$st")" \
        accepted="$(j .receiver.accepted "$st")"
    log "$(printf 'round %d/%d  ship   %-12s %7.1f MB/s  %.2f s' "$round" "$ROUNDS" aimctl-ship "$(jq -n "$SHIP_SEG_BYTES / $s / 1e6")" "$s")"
}

ship_curl() { # ROUND
    local round=$1 run="$SCRATCH/ship/run" t0 t1 rc tag="r${1}_curl" lf
    lf="$RAW/ship/$tag.log"
    rm -rf "$run"
    mkdir -p "$run"
    remote_up "$run"
    drop_caches
    warm "$SHIP_J"/*.aimj
    t0=$(now_ns)
    (cd "$SHIP_J" && exec nsenter --net="$NS_PATH" curl -sS --cacert "$PKI/ca.pem" --cert "$PKI/client.pem" \
        --key "$PKI/client.key" -H "Authorization: Bearer $TOKEN" -T "{$SHIP_FILES}" \
        "https://127.0.0.1:$RECV_PORT/aim/$SHIP_GROUP/" -o /dev/null \
        -w '%{stderr}%{http_code} %{size_upload} %{time_total} %{url_effective}\n') >/dev/null 2>"$lf" &
    FIO_PID=$!
    wait "$FIO_PID"
    rc=$?
    FIO_PID=""
    t1=$(now_ns)
    [[ $rc == 0 ]] || { show_log "$lf"; fail "curl failed with status $rc"; }
    local n bad
    n=$(awk '$1 ~ /^[0-9]+$/' "$lf" | wc -l)
    bad=$(awk '$1 ~ /^[0-9]+$/ && $1 != 201' "$lf" | head -n 3)
    [[ $n == "$SHIP_NSEG" && -z $bad ]] || { show_log "$lf"; fail "not every upload was answered 201 ($lf)"; }
    local st
    st=$(rstatus)
    printf '%s\n' "$st" >"$RAW/ship/$tag.remote-status.json"
    stop_remote
    local s
    s=$(jq -n "($t1 - $t0) / 1e9")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=ship side=curl bytes="$SHIP_SEG_BYTES" seconds="$s" \
        mbps="$(jq -n "$SHIP_SEG_BYTES / $s / 1e6")" bytes_received="$(j .receiver.bytes_received "$st")"
    log "$(printf 'round %d/%d  ship   %-12s %7.1f MB/s  %.2f s' "$round" "$ROUNDS" curl "$(jq -n "$SHIP_SEG_BYTES / $s / 1e6")" "$s")"
}

# ================================================================ rpo
# A fresh source (sparse image, fresh journal) and replica per round. fio
# writes at RPO_RATE for RPO_RUNTIME s; then everything drains. aim-remote runs
# with --retain so that the applied segments can be read afterwards (it only
# renames instead of deleting); aimfs runs at its defaults.
RPO_FILE_SIZE=1G
rpo_round() { # ROUND
    local round=$1 d="$SCRATCH/rpo/r$1" tag="r${1}" lf="$RAW/logs/aimfs-rpo.log"
    mkdir -p "$d/backing" "$d/mnt" "$d/j" "$d/replica"
    truncate -s "$RPO_FILE_SIZE" "$d/backing/vm.raw" "$d/replica/vm.raw"
    TGT_DIR="$d/replica" remote_up "$d/remote" --retain
    dest_conf "$d/aimfs.conf" aimfs
    mount_aimfs "$lf" -o "config=$d/aimfs.conf,journal=$d/j" "$d/backing" "$d/mnt"
    local apid=$MNT_PID group
    group=$(j .group "$(sstatus)")
    [[ -n $group && $group != null ]] || fail "no group in aimfs's status"
    "${INNS[@]}" "$PY" "$HELPER" poll --status "$REMOTE_STATUS" --group "$group" --interval "$POLL_INTERVAL" \
        --out "$RAW/rpo/$tag.polls.jsonl" >/dev/null 2>"$RAW/rpo/$tag.poll.err" &
    local poller=$!
    BG[$poller]=poller
    drop_caches
    local fargs="--rw=write --bs=$RPO_BS --direct=1 --ioengine=libaio --iodepth=4 --rate=$RPO_RATE --time_based --runtime=$RPO_RUNTIME --size=$RPO_FILE_SIZE"
    [[ $round == 1 ]] && profile_start "$apid" "$RAW/prof/rpo-aimfs.perf"
    # shellcheck disable=SC2086
    fio_bg "$RAW/fio/rpo-$tag.stderr" --name=rpo --filename="$d/mnt/vm.raw" $fargs \
        --output-format=json --output="$RAW/fio/rpo-$tag.json" ||
        { show_log "$RAW/fio/rpo-$tag.stderr"; fail "fio into the mount failed (rpo, round $round)"; }
    local head res
    head=$(j .head_lsn "$(sstatus)")
    res=$(inns "$PY" "$HELPER" wait-applied --state-db "$d/remote/state/remote.db" --group "$group" \
        --lsn "$head" --pid "$REMOTE_PID" --timeout 600 --interval 0.02) ||
        { show_log "$lf"; show_log "$RAW/logs/aim-remote.log"; fail "the replica did not catch up (rpo, round $round)"; }
    [[ $round == 1 ]] && profile_stop "$RAW/prof/rpo-aimfs.perf"
    sleep "$POLL_INTERVAL"
    stop_pid "$poller" 10
    sstatus >"$RAW/rpo/$tag.source-status.json"
    rstatus >"$RAW/rpo/$tag.remote-status.json"
    unmount_fuse "$d/mnt"
    [[ $DAEMON_RC == 0 ]] || { show_log "$lf"; fail "aimfs exited with status $DAEMON_RC"; }
    stop_remote
    local r
    r=$("$PY" "$HELPER" rpo --aimctl "$AIMCTL" --segments "$d/remote/inbox/$group/applied" \
        --state-db "$d/remote/state/remote.db" --group "$group" --polls "$RAW/rpo/$tag.polls.jsonl" \
        --catalog "$d/j/catalog.db") ||
        fail "cannot compute the recovery point (rpo, round $round)"
    printf '%s\n' "$r" >"$RAW/rpo/$tag.rpo.json"
    local m
    m=$("$PY" "$HELPER" fio "$RAW/fio/rpo-$tag.json")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=rpo side=aimfs p50="$(j .state.p50 "$r")" p99="$(j .state.p99 "$r")" \
        max="$(j .state.max "$r")" writes="$(j .state.count "$r")" poll_p50="$(j .poll.p50 "$r")" \
        poll_p99="$(j .poll.p99 "$r")" poll_interval_p50="$(j .poll_interval.p50 "$r")" \
        poll_interval_p99="$(j .poll_interval.p99 "$r")" segments="$(j .segments_applied "$r")" \
        fio_mbps="$(jq -n "$(j .bytes "$m") / $(j .seconds "$m") / 1e6")" \
        fill_p50="$(j '.segment_stages.fill.p50 // empty' "$r")" ship_p50="$(j '.segment_stages.ship.p50 // empty' "$r")" \
        apply_p50="$(j '.segment_stages.apply.p50 // empty' "$r")" \
        note="segment applied_ns; polls: p50 $(printf '%.3f' "$(j .poll.p50 "$r")") p99 $(printf '%.3f' "$(j .poll.p99 "$r")")"
    log "$(printf 'round %d/%d  rpo    %d writes in %d segments, fio %.1f MB/s: p50 %.3f s  p99 %.3f s  max %.3f s (polls: p50 %.3f p99 %.3f)' \
        "$round" "$ROUNDS" "$(j .state.count "$r")" "$(j .segments_applied "$r")" \
        "$(jq -n "$(j .bytes "$m") / $(j .seconds "$m") / 1e6")" "$(j .state.p50 "$r")" "$(j .state.p99 "$r")" \
        "$(j .state.max "$r")" "$(j .poll.p50 "$r")" "$(j .poll.p99 "$r")")"
    log "$(printf '             per segment (p50): filling %.3f s, sealed -> acknowledged %.3f s, acknowledged -> applied %.3f s' \
        "$(j '.segment_stages.fill.p50 // 0' "$r")" "$(j '.segment_stages.ship.p50 // 0' "$r")" "$(j '.segment_stages.apply.p50 // 0' "$r")")"
    rm -rf "$d"
}

# ================================================================ delta
# One image of random content, mirrored before the first round: the source
# (backing of an aimfs mount that ships to aim-remote), the replica (aim-remote's
# target) and rsync's copy start equal. Each round changes CHANGE_PCT % of it
# with random 4 KiB writes through the mount (fio, seed 1000+round), measures
# aimfs until the replica has applied the last write, then rsync of the changed
# image onto its copy (equal to the image before this round's writes).
DD="$SCRATCH/delta"
delta_setup() {
    mkdir -p "$DD/backing" "$DD/mnt" "$DD/j" "$DD/replica" "$DD/rsyncdst" "$DD/remote"
    log "delta: making a $IMG_SIZE image of random content and two copies of it"
    head -c "$IMG_BYTES" /dev/urandom >"$DD/backing/img.raw" || fail "cannot make the image"
    cp "$DD/backing/img.raw" "$DD/replica/img.raw"
    cp "$DD/backing/img.raw" "$DD/rsyncdst/img.raw"
    sync
    TGT_DIR="$DD/replica" remote_up "$DD/remote"
    dest_conf "$DD/aimfs.conf" aimfs
    mount_aimfs "$RAW/logs/aimfs-delta.log" -o "config=$DD/aimfs.conf,journal=$DD/j" "$DD/backing" "$DD/mnt"
    DELTA_AIMFS=$MNT_PID
    DELTA_GROUP=$(j .group "$(sstatus)")
    cat >"$DD/rsyncd.conf" <<EOF
pid file = $DD/rsyncd.pid
use chroot = false
[bench]
path = $DD/rsyncdst
read only = false
uid = root
gid = root
EOF
    start_bg rsyncd "$RAW/logs/rsyncd.log" "${INNS[@]}" rsync --daemon --no-detach --config="$DD/rsyncd.conf" \
        --address=127.0.0.1 --port="$RSYNC_PORT" --log-file="$RAW/logs/rsyncd.log"
    RSYNCD=$BG_PID
    wait_port "$RSYNC_PORT" "$RSYNCD" "rsync --daemon" "$RAW/logs/rsyncd.log"
    meta delta_image "$IMG_SIZE of /dev/urandom; changed per round: $CHANGE_IOS random 4 KiB writes ($CHANGE_PCT %, $((CHANGE_IOS * 4096)) bytes)"
    meta fio:delta "fio --filename=MNT/img.raw --rw=randwrite --bs=4k --size=$IMG_SIZE --number_ios=$CHANGE_IOS --randseed=1000+ROUND --refill_buffers --direct=1 --ioengine=psync"
    meta delta_aimfs "aimfs at its defaults (config: one destination, TLS, token) mounted once over the image; time = from fio's exit to the time aim-remote recorded the last segment applied (state DB); bytes = loopback bytes in the namespace from before fio starts to convergence (both directions, IP/TCP/TLS/HTTP included, plus one /status request of ~1 kB)"
    meta delta_rsync "$(rsync --version | head -n1); rsync --inplace --no-whole-file --stats BACKING/img.raw rsync://127.0.0.1:$RSYNC_PORT/bench/img.raw (daemon in the namespace, no ssh, no fsync); time = rsync's wall time; bytes = loopback bytes in the namespace during rsync; caches $([[ $WARM_RSYNC == 1 ]] && echo "warm (--warm-rsync)" || echo "dropped before rsync")"
}

delta_round() { # ROUND
    local round=$1 tag="r$1" c0 c1 b0 b1 tw0 tw1 res head
    drop_caches
    b0=$(j .receiver.bytes_received "$(rstatus)")
    c0=$(lo_tx_bytes)
    [[ $round == 1 ]] && profile_start "$DELTA_AIMFS" "$RAW/prof/delta-aimfs.perf"
    tw0=$(now_ns)
    fio_bg "$RAW/fio/delta-$tag.stderr" --name=delta --filename="$DD/mnt/img.raw" --rw=randwrite --bs=4k \
        --size="$IMG_SIZE" --number_ios="$CHANGE_IOS" --randseed=$((1000 + round)) --refill_buffers \
        --direct=1 --ioengine=psync --output-format=json --output="$RAW/fio/delta-$tag.json" ||
        { show_log "$RAW/fio/delta-$tag.stderr"; fail "fio into the mount failed (delta, round $round)"; }
    tw1=$(now_ns)
    head=$(j .head_lsn "$(sstatus)")
    res=$(inns "$PY" "$HELPER" wait-applied --state-db "$DD/remote/state/remote.db" --group "$DELTA_GROUP" \
        --lsn "$head" --pid "$REMOTE_PID" --timeout 600 --interval 0.005) ||
        fail "the replica did not catch up (delta, round $round)"
    c1=$(lo_tx_bytes)
    [[ $round == 1 ]] && profile_stop "$RAW/prof/delta-aimfs.perf"
    b1=$(j .receiver.bytes_received "$(rstatus)")
    sstatus >"$RAW/delta/$tag.source-status.json"
    local conv wire changed m
    conv=$(jq -n "([$(j .last_applied_ns "$res") - $tw1, 0] | max) / 1e9")
    wire=$((c1 - c0))
    m=$("$PY" "$HELPER" fio "$RAW/fio/delta-$tag.json")
    changed=$(j .bytes "$m")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=delta side=aimfs seconds="$conv" wire_bytes="$wire" changed="$changed" \
        payload_bytes="$((b1 - b0))" write_seconds="$(jq -n "($tw1 - $tw0) / 1e9")" \
        poll_seconds="$(jq -n "($(j .poll_ns "$res") - $tw1) / 1e9")"
    log "$(printf 'round %d/%d  delta  %-6s converged %.3f s after the writes; %.2f MB on the wire (%.3fx the %.2f MB changed; receiver got %.2f MB)' \
        "$round" "$ROUNDS" aimfs "$conv" "$(jq -n "$wire / 1e6")" "$(jq -n "$wire / $changed")" \
        "$(jq -n "$changed / 1e6")" "$(jq -n "($b1 - $b0) / 1e6")")"

    # rsync of the same change.
    drop_caches
    [[ $WARM_RSYNC == 1 ]] && warm "$DD/backing/img.raw" "$DD/rsyncdst/img.raw"
    local t0 t1 rc
    c0=$(lo_tx_bytes)
    t0=$(now_ns)
    "${INNS[@]}" rsync --inplace --no-whole-file --stats "$DD/backing/img.raw" \
        "rsync://127.0.0.1:$RSYNC_PORT/bench/img.raw" >"$RAW/delta/$tag.rsync.out" 2>&1 &
    FIO_PID=$!
    wait "$FIO_PID"
    rc=$?
    FIO_PID=""
    t1=$(now_ns)
    c1=$(lo_tx_bytes)
    [[ $rc == 0 ]] || { show_log "$RAW/delta/$tag.rsync.out"; fail "rsync failed with status $rc"; }
    local s sent recv
    s=$(jq -n "($t1 - $t0) / 1e9")
    sent=$(awk -F': ' '/^Total bytes sent/ {gsub(/,/, "", $2); print $2}' "$RAW/delta/$tag.rsync.out")
    recv=$(awk -F': ' '/^Total bytes received/ {gsub(/,/, "", $2); print $2}' "$RAW/delta/$tag.rsync.out")
    SEQ=$((SEQ + 1))
    record round="$round" seq="$SEQ" test=delta side=rsync seconds="$s" wire_bytes="$((c1 - c0))" changed="$changed" \
        rsync_sent="${sent:-0}" rsync_received="${recv:-0}"
    log "$(printf 'round %d/%d  delta  %-6s %.3f s; %.2f MB on the wire (rsync --stats: sent %s, received %s)' \
        "$round" "$ROUNDS" rsync "$s" "$(jq -n "($c1 - $c0) / 1e6")" "${sent:-?}" "${recv:-?}")"

    # Both copies must now equal the source.
    cmp "$DD/backing/img.raw" "$DD/replica/img.raw" || fail "the aimfs replica differs from the source after round $round"
    cmp "$DD/backing/img.raw" "$DD/rsyncdst/img.raw" || fail "rsync's copy differs from the source after round $round"
}

# ================================================================ go
# Each test runs its rounds before the next test starts (they share ports).
log "${#TESTS[@]} tests x $ROUNDS rounds"
if has_test ship; then
    make_ship_journal
    for ((r = 1; r <= ROUNDS; r++)); do
        # Alternate: aimctl ship first in odd rounds, curl first in even ones.
        if ((r % 2)); then ship_aimctl "$r"; ship_curl "$r"; else ship_curl "$r"; ship_aimctl "$r"; fi
    done
    rm -rf "$SCRATCH/ship"
fi
if has_test rpo; then
    meta fio:rpo "fio --filename=MNT/vm.raw --rw=write --bs=$RPO_BS --direct=1 --ioengine=libaio --iodepth=4 --rate=$RPO_RATE --time_based --runtime=$RPO_RUNTIME --size=$RPO_FILE_SIZE"
    meta rpo_method "per WRITE record of the applied segments (aimctl dump): source time (the record's time_ns, taken when aimfs journals the write) -> the time aim-remote recorded that write's segment as applied in its state DB (segments.applied_ns, written after the targets are fsynced); cross-check: the first /status poll (every $POLL_INTERVAL s) whose applied_lsn covers the write"
    for ((r = 1; r <= ROUNDS; r++)); do rpo_round "$r"; done
fi
if has_test delta; then
    delta_setup
    for ((r = 1; r <= ROUNDS; r++)); do delta_round "$r"; done
    unmount_fuse "$DD/mnt"
    [[ $DAEMON_RC == 0 ]] || log "warning: aimfs (delta) exited with status $DAEMON_RC"
    stop_remote
    stop_pid "$RSYNCD" 10
fi
meta loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" "$HELPER" report --kind mirror --raw "$RAW" --md "$OUT" --json "$OUT_JSON" || fail "report generation failed"
log "report: $OUT (numbers: $OUT_JSON, raw: $RAW/)"
