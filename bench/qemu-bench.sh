#!/usr/bin/env bash
# qemu-bench.sh - QEMU's own block layer (qemu-img bench) on an image
#   (a) direct   on the backing filesystem,
#   (b) aimfs    on an aimfs mount without destination,
#   (c) aimfs-dr on an aimfs mount shipping to an aim-remote on loopback (HTTPS,
#                client certificate, token; in a private network namespace),
# for raw and qcow2 images and the cache/aio modes libvirt and QEMU use:
#   none-native     -t none -i native     (libvirt cache=none,io=native)
#   none-io_uring   -t none -i io_uring
#   writeback-threads -t writeback -i threads (QEMU's default)
# Rows (qemu-img bench is sequential: offset += buffer size, wrapping):
#   read-4k-d1 read-4k-d16 read-1m-d1 write-4k-d1 write-4k-d16 write-1m-d1
#   write-4k-d1-flush16 (a guest that flushes every 16 writes)
# Each round runs every row on the three targets in turn (the order rotates
# from round to round); the report gives medians and the ratio of each
# target to direct in the same round (median of the rounds' ratios).
# See bench/README.md.
#
#   sudo bench/qemu-bench.sh [--quick] [--rounds N] [--size SIZE] [--scale F] ...
#
# Needs root (drop_caches, FUSE, a network namespace), qemu-img, curl, jq,
# fusermount3, ip, nsenter and /usr/bin/python3. Every process it starts is
# stopped by PID, every mount and the namespace undone and the scratch
# directory removed, on exit, on error and on Ctrl-C.

set -uo pipefail

PROG=qemu-bench
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
CMDLINE=$(cmdline_of qemu-bench.sh "$@")
ALL_TARGETS="direct aimfs aimfs-dr"
ALL_FORMATS="raw qcow2"
ALL_MODES="none-native none-io_uring writeback-threads"
ALL_OPS="read-4k-d1 read-4k-d16 read-1m-d1 write-4k-d1 write-4k-d16 write-1m-d1 write-4k-d1-flush16"

usage() {
    cat <<EOF
usage: sudo $0 [options]

  --build DIR         build to measure (default: $(default_build))
  --dir DIR           create the scratch directory inside DIR (default /var/tmp)
  --rounds N          rounds; medians are reported (default 3; --quick 1)
  --size SIZE         each image's virtual size (default 1G; --quick 256M)
  --scale F           multiply every row's request count (default 1; --quick 0.25):
                      4 KiB d1 ${C4K1}, 4 KiB d16 ${C4K16}, 1 MiB ${C1M}, flush row ${CFL}
  --targets LIST      subset of: ${ALL_TARGETS// /,}
  --formats LIST      subset of: ${ALL_FORMATS// /,}
  --modes LIST        subset of: ${ALL_MODES// /,}
  --ops LIST          subset of: ${ALL_OPS// /,}
  --aimfs-opts OPTS   extra -o options for both aimfs mounts (e.g. strict_cache)
  --profile           perf record the whole VM during round 1's aimfs and aimfs-dr
                      runs (their figures then include perf's cost); per-process
                      reports of aimfs and aim-remote in FILE.raw/prof/
  --quick             smoke test: --rounds 1 --size 256M --scale 0.25
  --out FILE          markdown report (default bench/results/qemu-<date>.md); next
                      to it FILE.json and FILE.raw/
  -h, --help          this text
EOF
}

# request counts per row at --scale 1 (about 1-3 s each on direct here)
C4K1=20000 C4K16=60000 C1M=1024 CFL=4000
BUILD_ARG=$(default_build) BASE_DIR=/var/tmp OUT="" QUICK=0 AIMFS_OPTS=""
OPT_ROUNDS="" OPT_SIZE="" OPT_SCALE=""
TARGETS_ARG=${ALL_TARGETS// /,} FORMATS_ARG=${ALL_FORMATS// /,} MODES_ARG=${ALL_MODES// /,} OPS_ARG=${ALL_OPS// /,}
while [[ $# -gt 0 ]]; do
    case $1 in
    --build) need_arg "$@"; BUILD_ARG=$2; shift 2 ;;
    --dir) need_arg "$@"; BASE_DIR=$2; shift 2 ;;
    --rounds) need_arg "$@"; OPT_ROUNDS=$2; shift 2 ;;
    --size) need_arg "$@"; OPT_SIZE=$2; shift 2 ;;
    --scale) need_arg "$@"; OPT_SCALE=$2; shift 2 ;;
    --targets) need_arg "$@"; TARGETS_ARG=$2; shift 2 ;;
    --formats) need_arg "$@"; FORMATS_ARG=$2; shift 2 ;;
    --modes) need_arg "$@"; MODES_ARG=$2; shift 2 ;;
    --ops) need_arg "$@"; OPS_ARG=$2; shift 2 ;;
    --aimfs-opts) need_arg "$@"; AIMFS_OPTS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --profile) PROFILE=1; shift ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
    esac
done
if [[ $QUICK == 1 ]]; then ROUNDS=${OPT_ROUNDS:-1} SIZE=${OPT_SIZE:-256M} SCALE=${OPT_SCALE:-0.25}
else ROUNDS=${OPT_ROUNDS:-3} SIZE=${OPT_SIZE:-1G} SCALE=${OPT_SCALE:-1}; fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $SCALE =~ ^[0-9]*\.?[0-9]+$ ]] || die "--scale must be a positive number"
SIZE_BYTES=$(size_bytes "$SIZE") || die "bad --size '$SIZE'"

pick() { # LIST ALL WHAT -> words of LIST, each in ALL
    local x out=() _l
    IFS=',' read -r -a _l <<<"$1"
    for x in "${_l[@]}"; do
        [[ -z $x ]] && continue
        [[ " $2 " == *" $x "* ]] || die "unknown $3 '$x' (known: ${2// /,})"
        out+=("$x")
    done
    ((${#out[@]})) || die "no $3 selected"
    printf '%s\n' "${out[@]}"
}
mapfile -t TARGETS < <(pick "$TARGETS_ARG" "$ALL_TARGETS" target) || exit 1
mapfile -t FORMATS < <(pick "$FORMATS_ARG" "$ALL_FORMATS" format) || exit 1
mapfile -t MODES < <(pick "$MODES_ARG" "$ALL_MODES" mode) || exit 1
mapfile -t OPS < <(pick "$OPS_ARG" "$ALL_OPS" op) || exit 1
has_target() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }

count_of() { # OP -> requests
    local c
    case $1 in
    *-4k-d1) c=$C4K1 ;; *-4k-d16) c=$C4K16 ;; *-1m-d1) c=$C1M ;; *-flush16) c=$CFL ;;
    esac
    "$PY" -c "import sys; print(max(16, int(float(sys.argv[1]) * float(sys.argv[2]))))" "$c" "$SCALE"
}
args_of_op() { # OP -> qemu-img bench arguments
    case $1 in
    read-4k-d1) echo "-s 4096 -d 1" ;;
    read-4k-d16) echo "-s 4096 -d 16" ;;
    read-1m-d1) echo "-s 1048576 -d 1" ;;
    write-4k-d1) echo "-w -s 4096 -d 1" ;;
    write-4k-d16) echo "-w -s 4096 -d 16" ;;
    write-1m-d1) echo "-w -s 1048576 -d 1" ;;
    write-4k-d1-flush16) echo "-w -s 4096 -d 1 --flush-interval=16" ;;
    esac
}
args_of_mode() {
    case $1 in
    none-native) echo "-t none -i native" ;;
    none-io_uring) echo "-t none -i io_uring" ;;
    writeback-threads) echo "-t writeback -i threads" ;;
    esac
}

# ---------------------------------------------------------------- preflight
[[ $EUID -eq 0 ]] || die "needs root (drop_caches, FUSE, network namespace): run 'sudo $0 $*'"
[[ -x $PY ]] || die "$PY not found"
for c in qemu-img curl jq fusermount3 mountpoint findmnt numfmt ip nsenter; do
    command -v "$c" >/dev/null || die "'$c' not found (apt-get install -y qemu-utils curl jq fuse3 iproute2 util-linux)"
done
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"
find_build "$BUILD_ARG"
[[ -d $BASE_DIR ]] || die "--dir $BASE_DIR is not a directory"

trap bench_cleanup EXIT
trap 'log "interrupted (SIGINT)"; exit 130' INT
trap 'log "terminated (SIGTERM)"; exit 143' TERM

make_scratch_and_output qemu logs qemu
rm -f "$RUNS"   # this script keeps its runs as a table
RUNS="$RAW/runs.tsv"
printf 'round\tformat\tmode\top\ttarget\tcount\tbytes\tseconds\tqemu_cpu_ms\taimfs_cpu_ms\tremote_cpu_ms\tdisk_bytes\n' >"$RUNS"

netns_create
REMOTE_STATUS=127.0.0.1:9381
RECV_PORT=9443
DR_STATUS=127.0.0.1:9380
PKI="$SCRATCH/pki"
make_pki "$PKI"

# Each target has its own directory on the one filesystem, with its own copy
# of the images (a mount's journal and group are its own).
declare -A DIR_OF=([direct]="$SCRATCH/direct" [aimfs]="$SCRATCH/mnt-b" [aimfs-dr]="$SCRATCH/mnt-c")
need=$(((SIZE_BYTES * ${#FORMATS[@]} * 3) + (4 << 30)))
avail=$(($(stat -f -c '%a*%S' "$SCRATCH")))
((avail >= need)) || die "not enough space in $SCRATCH: $((avail >> 20)) MiB free, need about $((need >> 20)) MiB"

meta_machine
meta qemu_img "$(qemu-img --version | head -n1)"
meta rounds "$ROUNDS"
meta size "$SIZE"
meta scale "$SCALE"
meta targets "${TARGETS[*]}"
meta aimfs_opts "${AIMFS_OPTS:-none}"
meta images "raw: qemu-img create -f raw -o preallocation=full; qcow2: qemu-img create -f qcow2 -o preallocation=full (every cluster allocated: writes are overwrites)"
meta target_direct "image in $SCRATCH/direct on the backing filesystem"
meta target_aimfs "aimfs -o journal=J${AIMFS_OPTS:+,$AIMFS_OPTS} $SCRATCH/b $SCRATCH/mnt-b (no destination), mounted for each run, its segments deleted after each run"
meta target_aimfs_dr "aimfs with [destination dr1] https://127.0.0.1:$RECV_PORT/aim (aim-remote on the same VM, TLS, client certificate, token), in sync before every run"
meta method "each run: sync, drop_caches, settle (writeback rows), qemu-img bench -f FMT MODE ARGS -c COUNT IMAGE; throughput = count x size / the 'Run completed in' seconds"

DISK=$(disk_of "$SCRATCH")
meta disk "${DISK:-none (no I/O counters for $(findmnt -no SOURCE -T "$SCRATCH"))}"
meta costs "per run, not in its time: CPU = qemu-img's (user+system) + the target's daemons' (aimfs; aimfs and aim-remote for aimfs-dr) from before qemu-img starts until, for aimfs-dr, the remote applied everything; disk = bytes written to the scratch directory's block device (/sys/class/block/DEV/stat) from before qemu-img starts until a sync after that (and after the unmount for aimfs); the whole VM's writes, so a quiet VM is assumed"
log "scratch $SCRATCH ($(findmnt -no FSTYPE -T "$SCRATCH")), results $OUT"

# ---------------------------------------------------------------- images
make_images() { # DIR
    local f
    mkdir -p "$1"
    for f in "${FORMATS[@]}"; do
        qemu-img create -q -f "$f" -o preallocation=full "$1/vm.$f" "$SIZE" || die "qemu-img create failed in $1"
    done
}
log "laying out ${FORMATS[*]} images of $SIZE for ${TARGETS[*]}"
has_target direct && make_images "$SCRATCH/direct"
has_target aimfs && make_images "$SCRATCH/b"
has_target aimfs-dr && make_images "$SCRATCH/c"
sync

# ---------------------------------------------------------------- mounts
sstatus() { inns curl -sf "http://$DR_STATUS/status"; }
wait_status() { # JQ_FILTER TIMEOUT_S: until the source's /status says true
    local deadline=$((SECONDS + $2))
    until [[ $(sstatus | jq -r "$1" 2>/dev/null) == true ]]; do
        ((SECONDS >= deadline)) && return 1
        sleep 0.2
    done
}
wait_in_sync() { wait_status '.in_sync' "$1"; } # TIMEOUT_S
# Until the remote says it applied everything it acknowledged (asked every 2 s).
wait_applied() { wait_status '.destinations[0].remote.applied_all' "$1"; } # TIMEOUT_S
# (b) keeps every segment (no destination): it is mounted for each run and its
# segments are deleted after the unmount, as fs-bench.sh does.
mount_b() { mount_aimfs "$RAW/logs/aimfs.log" -o "journal=$SCRATCH/j-b,status=off${AIMFS_OPTS:+,$AIMFS_OPTS}" "$SCRATCH/b" "$SCRATCH/mnt-b"; }
unmount_b() {
    unmount_fuse "$SCRATCH/mnt-b"
    [[ $DAEMON_RC == 0 ]] || { show_log "$RAW/logs/aimfs.log"; die "aimfs (no destination) exited with status $DAEMON_RC"; }
    find "$SCRATCH/j-b" -type f \( -name '*.aimj' -o -name '*.open' \) -delete
}
if has_target aimfs; then
    mkdir -p "$SCRATCH/j-b"
    mount_b # the first mount adopts the images
    unmount_b
fi
if has_target aimfs-dr; then
    mkdir -p "$SCRATCH/j-c" "$SCRATCH/remote/inbox" "$SCRATCH/remote/state" "$SCRATCH/remote/tgt"
    start_remote "$RAW/logs/aim-remote.log" --inbox "$SCRATCH/remote/inbox" --state "$SCRATCH/remote/state" \
        --target-dir "$SCRATCH/remote/tgt" --status "$REMOTE_STATUS" --listen "127.0.0.1:$RECV_PORT" \
        --tls-cert "$PKI/server.pem" --tls-key "$PKI/server.key" --client-ca "$PKI/ca.pem" --token-file "$PKI/token"
    wait_port "$RECV_PORT" "$REMOTE_PID" aim-remote "$RAW/logs/aim-remote.log"
    {
        printf '[aimfs]\nstatus = %s\njournal = %s\n' "$DR_STATUS" "$SCRATCH/j-c"
        printf '\n[destination dr1]\nurl = https://127.0.0.1:%s/aim\n' "$RECV_PORT"
        printf 'ca_file = %s\ncert_file = %s\nkey_file = %s\ntoken_file = %s\n' \
            "$PKI/ca.pem" "$PKI/client.pem" "$PKI/client.key" "$PKI/token"
    } >"$SCRATCH/dr.conf"
    mount_aimfs "$RAW/logs/aimfs-dr.log" -o "config=$SCRATCH/dr.conf${AIMFS_OPTS:+,$AIMFS_OPTS}" "$SCRATCH/c" "$SCRATCH/mnt-c"
    DR_PID=$MNT_PID
    log "aimfs-dr: waiting for the initial sync of the images to aim-remote"
    wait_in_sync 900 || { show_log "$RAW/logs/aimfs-dr.log"; die "aimfs-dr not in sync after 900 s"; }
fi

# ---------------------------------------------------------------- runs
run_one() { # ROUND FMT MODE OP TARGET -> RES (for the log)
    local round=$1 fmt=$2 mode=$3 op=$4 tgt=$5 img count bs out secs tag
    img="${DIR_OF[$tgt]}/vm.$fmt"
    count=$(count_of "$op")
    case $op in *-1m-*) bs=1048576 ;; *) bs=4096 ;; esac
    tag="r${round}_${fmt}_${mode}_${op}_${tgt}"
    if [[ $tgt == aimfs-dr ]]; then
        wait_in_sync 300 || log "warning: aimfs-dr not in sync before $tag"
    fi
    [[ $tgt == aimfs ]] && mount_b
    drop_caches
    [[ $mode == writeback-* ]] && settle_memory
    # What the run costs (not in its time): CPU of qemu-img and of the
    # target's daemons, bytes written to the disk, through what the run
    # left behind (shipping, applying, writeback).
    local daemon="" remote="" d0 r0 ch0 disk0="" qemu_ms aimfs_ms="" remote_ms="" disk_bytes=""
    case $tgt in aimfs) daemon=$MNT_PID ;; aimfs-dr) daemon=$DR_PID remote=$REMOTE_PID ;; esac
    d0=$(cpu_ticks "$daemon")
    r0=$(cpu_ticks "$remote")
    [[ -n $DISK ]] && disk0=$(disk_written_bytes "$DISK")
    local prof="$RAW/prof/$tag.perf"
    if [[ ${PROFILE:-0} == 1 && $round == 1 && -n $daemon ]]; then
        mkdir -p "$RAW/prof"
        profile_start "$daemon" "$prof"
    fi
    children_cpu_ms
    ch0=$CHILDREN_CPU_MS
    # shellcheck disable=SC2046
    out=$(qemu-img bench -f "$fmt" $(args_of_mode "$mode") $(args_of_op "$op") -c "$count" "$img" 2>&1)
    local rc=$?
    children_cpu_ms
    printf '%s\n' "$out" >"$RAW/qemu/$tag.txt"
    if [[ $rc == 0 && $tgt == aimfs-dr ]]; then
        { wait_in_sync 300 && wait_applied 300; } || log "warning: aimfs-dr not applied 300 s after $tag"
    fi
    qemu_ms=$((CHILDREN_CPU_MS - ch0))
    [[ -n $daemon ]] && aimfs_ms=$((($(cpu_ticks "$daemon") - d0) * 1000 / CLK_TCK))
    if [[ -n $remote ]]; then
        alive "$remote" || { show_log "$RAW/logs/aim-remote.log"; die "aim-remote died during $tag"; }
        remote_ms=$((($(cpu_ticks "$remote") - r0) * 1000 / CLK_TCK))
    fi
    if [[ -n ${PROF_PID:-} ]]; then
        profile_stop "$prof"
        [[ -n $remote ]] && profile_report "$prof" "$remote" >"$prof.remote.txt"
    fi
    [[ $tgt == aimfs ]] && unmount_b
    [[ $rc == 0 ]] || die "qemu-img bench failed ($tag): $out"
    if [[ -n $DISK ]]; then
        sync
        disk_bytes=$(($(disk_written_bytes "$DISK") - disk0))
    fi
    secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")
    [[ -n $secs ]] || die "no 'Run completed' line from qemu-img bench ($tag): $out"
    for m in "${!MOUNTS[@]}"; do
        alive "${MOUNTS[$m]}" || { show_log "$RAW/logs/aimfs.log"; die "aimfs for $m died during $tag"; }
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$fmt" "$mode" "$op" "$tgt" "$count" "$bs" "$secs" \
        "$qemu_ms" "$aimfs_ms" "$remote_ms" "$disk_bytes" >>"$RUNS"
    RES=$("$PY" -c 'import sys; c,b,s=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]); print(f"{c*b/s/1e6:,.0f} MB/s" if b>=1<<20 else f"{c/s:,.0f} IOPS")' "$count" "$bs" "$secs")
}

NRUNS=$((ROUNDS * ${#FORMATS[@]} * ${#MODES[@]} * ${#OPS[@]} * ${#TARGETS[@]}))
log "$NRUNS runs: ${#FORMATS[@]} formats x ${#MODES[@]} modes x ${#OPS[@]} rows x ${#TARGETS[@]} targets x $ROUNDS rounds"
n=0
for ((round = 1; round <= ROUNDS; round++)); do
    for fmt in "${FORMATS[@]}"; do
        for mode in "${MODES[@]}"; do
            for op in "${OPS[@]}"; do
                # rotate the targets' order from row to row and round to round
                k=$(((round + n) % ${#TARGETS[@]}))
                order=("${TARGETS[@]:k}" "${TARGETS[@]:0:k}")
                for tgt in "${order[@]}"; do
                    run_one "$round" "$fmt" "$mode" "$op" "$tgt"
                    log "round $round/$ROUNDS  $fmt $mode $op  $tgt  $RES"
                done
                n=$((n + 1))
            done
        done
    done
done

for m in "${!MOUNTS[@]}"; do
    unmount_fuse "$m"
    [[ $DAEMON_RC == 0 ]] || log "warning: aimfs of $m exited with status $DAEMON_RC"
done
[[ -n $REMOTE_PID ]] && stop_remote

"$PY" - "$RUNS" "$META_TSV" "$OUT" "$OUT_JSON" <<'EOF'
import csv, json, statistics as st, sys
runs_f, meta_f, out_md, out_json = sys.argv[1:5]
runs = list(csv.DictReader(open(runs_f), delimiter="\t"))
meta = dict(l.rstrip("\n").split("\t", 1) for l in open(meta_f) if "\t" in l)
def val(r):
    c, b, s = int(r["count"]), int(r["bytes"]), float(r["seconds"])
    return c * b / s / 1e6 if b >= 1 << 20 else c / s
def costs(r):
    # CPU per request (µs) and, for writes, bytes on the disk per byte written
    c, b = int(r["count"]), int(r["bytes"])
    ms = [int(r[k]) for k in ("qemu_cpu_ms", "aimfs_cpu_ms", "remote_cpu_ms") if r.get(k)]
    cpu = sum(ms) * 1000 / c if ms else None
    disk = int(r["disk_bytes"]) / (c * b) if r.get("disk_bytes") and "write" in r["op"] else None
    return cpu, disk
rows, cells, cost = [], {}, {}
for r in runs:
    key = (r["format"], r["mode"], r["op"])
    if key not in rows:
        rows.append(key)
    cells.setdefault(key, {}).setdefault(r["target"], {})[int(r["round"])] = val(r)
    cost.setdefault(key, {}).setdefault(r["target"], []).append(costs(r))
targets = [t for t in ("direct", "aimfs", "aimfs-dr") if any(t in c for c in cells.values())]
res = []
lines = ["# qemu-img bench: an image on the backing filesystem, on aimfs, on aimfs mirroring", "",
         f"{meta.get('date','')}, {meta.get('nproc','?')} CPUs, kernel {meta.get('kernel','?')}, "
         f"{meta.get('qemu_img','')}, images of {meta.get('size','?')}, {meta.get('rounds','?')} rounds, "
         f"build {meta.get('aimfs_git','?')} ({meta.get('buildtype','?')}), aimfs options: {meta.get('aimfs_opts','none')}",
         "", "Median over the rounds; in brackets the median of the rounds' ratios to direct (same round).", "",
         "| image | cache, aio | row | unit | " + " | ".join(targets) + " |",
         "|---|---|---|---|" + "---:|" * len(targets)]
for key in rows:
    c = cells[key]
    unit = "MB/s" if "1m" in key[2] else "IOPS"
    out = {"format": key[0], "mode": key[1], "op": key[2], "unit": unit}
    cols = []
    for t in targets:
        v = c.get(t, {})
        if not v:
            cols.append(""); continue
        med = st.median(v.values())
        ratios = [v[r] / c["direct"][r] for r in v if "direct" in c and r in c["direct"]]
        ratio = st.median(ratios) if ratios else None
        cpus = [x[0] for x in cost[key][t] if x[0] is not None]
        disks = [x[1] for x in cost[key][t] if x[1] is not None]
        out[t] = {"median": med, "rounds": v, "ratio": ratio, "ratios": ratios,
                  "cpu_us_per_request": st.median(cpus) if cpus else None,
                  "disk_bytes_per_byte": st.median(disks) if disks else None}
        cols.append(f"{med:,.0f}" + (f" ({ratio:.2f})" if ratio is not None and t != "direct" else ""))
    res.append(out)
    lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {unit} | " + " | ".join(cols) + " |")
lines += ["", "## What each request costs", "",
          "Medians over the rounds: CPU time per request in µs (qemu-img and the target's daemons,"
          " through the mirror's applying), and for writes the bytes written to the disk per byte"
          " the image was sent (through the writeback after the run). " + meta.get("costs", ""), "",
          "| image | cache, aio | row | " + " | ".join(f"{t} CPU µs | {t} disk ×" for t in targets) + " |",
          "|---|---|---|" + "---:|---:|" * len(targets)]
for o in res:
    cols = []
    for t in targets:
        x = o.get(t) or {}
        cpu, disk = x.get("cpu_us_per_request"), x.get("disk_bytes_per_byte")
        cols += [f"{cpu:,.0f}" if cpu is not None else "", f"{disk:.2f}" if disk is not None else ""]
    lines.append(f"| {o['format']} | {o['mode']} | {o['op']} | " + " | ".join(cols) + " |")
lines += ["", "Reproduce: `" + meta.get("command", "") + "`", ""]
lines += ["## Machine and method", ""] + [f"- {k}: {v}" for k, v in meta.items()]
open(out_md, "w").write("\n".join(lines) + "\n")
json.dump({"meta": meta, "rows": res}, open(out_json, "w"), indent=1)
print("\n".join(lines[:2 * len(rows) + 14]))
EOF
log "report: $OUT"
