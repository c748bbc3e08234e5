# bench/lib.sh - shell helpers shared by remote-bench.sh and mirror-bench.sh
# (sourced, not run). Everything started here is tracked by PID and stopped
# by PID; every mount, loop device, network namespace and scratch directory
# is registered so that bench_cleanup undoes it on exit, error or Ctrl-C.
# The caller sets PROG, SCRIPT_DIR, REPO_DIR before sourcing.

PY=/usr/bin/python3
HELPER="$SCRIPT_DIR/aimbench.py"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
now_ns() { date +%s%N; }

# The exact command line, for the report.
shq() { if [[ $1 =~ ^[A-Za-z0-9_./,=:+@%^-]+$ ]]; then printf '%s' "$1"; else printf '%q' "$1"; fi; }
cmdline_of() { # SCRIPT ARGS...
    local s="cd $(shq "$REPO_DIR") && sudo bench/$1" a
    shift
    for a in "$@"; do s+=" $(shq "$a")"; done
    printf '%s' "$s"
}

# ---------------------------------------------------------------- processes
declare -A BG=()      # PID -> what it is (for messages)
declare -A MOUNTS=()  # mountpoint -> PID of its FUSE daemon
LOOPS=()              # loop devices we attached
NETNS=""              # network namespace we created
SCRATCH=""            # scratch directory we created
FIO_PID=""
CLEANING=0

wait_exit() { # PID TIMEOUT_S -> 0 if the process is gone (or a zombie) in time
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        [[ $(awk '/^State:/{print $2}' "/proc/$pid/status" 2>/dev/null) == Z ]] && return 0
        ((SECONDS >= deadline)) && return 1
        sleep 0.05
    done
    return 0
}

# start_bg WHAT LOGFILE CMD... -> BG_PID (a child of this shell)
BG_PID=""
start_bg() {
    local what=$1 lf=$2
    shift 2
    printf '==== %s: %s\n' "$(date +%T)" "$*" >>"$lf"
    "$@" >>"$lf" 2>&1 </dev/null &
    BG_PID=$!
    BG[$BG_PID]=$what
}

# stop_pid PID [TIMEOUT] -> STOP_RC = exit status (SIGTERM, then SIGKILL)
STOP_RC=""
stop_pid() {
    local pid=$1 t=${2:-30}
    STOP_RC=""
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        if ! wait_exit "$pid" "$t"; then
            log "warning: ${BG[$pid]:-PID $pid} ($pid) ignored SIGTERM for ${t}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null
            wait_exit "$pid" 10
        fi
    fi
    wait "$pid" 2>/dev/null
    STOP_RC=$?
    unset 'BG[$pid]'
}

# A process that must still be running.
alive() { kill -0 "$1" 2>/dev/null && [[ $(awk '/^State:/{print $2}' "/proc/$1/status" 2>/dev/null) != Z ]]; }

show_log() { # FILE
    printf -- '---- last lines of %s ----\n' "$1" >&2
    tail -n 30 "$1" >&2 2>/dev/null
    printf -- '----\n' >&2
}

# ---------------------------------------------------------------- network namespace
# All servers and clients of a run live in a private network namespace with
# only its own loopback: fixed ports never collide with anything else on the
# machine, and its loopback byte counters count only this benchmark's traffic.
# nsenter --net only switches the network namespace (same mounts, same PID
# namespace, no fork), so $! is the PID of the program itself.
NS_PATH=""
INNS=()
netns_create() {
    command -v ip >/dev/null && command -v nsenter >/dev/null ||
        die "needs ip (iproute2) and nsenter (util-linux) for a private loopback"
    NETNS="aimbench-$$"
    ip netns add "$NETNS" || { NETNS=""; die "cannot create a network namespace (ip netns add)"; }
    NS_PATH="/run/netns/$NETNS"
    ip -n "$NETNS" link set lo up || die "cannot bring up lo in network namespace $NETNS"
    INNS=(nsenter --net="$NS_PATH")
}
inns() { nsenter --net="$NS_PATH" "$@"; }
lo_tx_bytes() { inns awk '$1 == "lo:" {print $10}' /proc/net/dev; }

# ---------------------------------------------------------------- FUSE
is_mounted() {
    MP="${1// /\\040}" awk '$5 == ENVIRON["MP"] { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# mount_aimfs LOGFILE -o OPTS BACKING MNT -> MNT_PID (aimfs -f in the namespace)
MNT_PID=""
mount_aimfs() {
    local lf=$1 mnt=${*: -1} pid deadline
    shift
    mkdir -p "$mnt"
    is_mounted "$mnt" && die "$mnt is already a mount point"
    start_bg aimfs "$lf" "${INNS[@]}" "$AIMFS" -f "$@"
    pid=$BG_PID
    MOUNTS[$mnt]=$pid
    deadline=$((SECONDS + 30))
    until mountpoint -q "$mnt"; do
        if ! alive "$pid"; then
            wait "$pid" 2>/dev/null
            local rc=$?
            unset 'MOUNTS[$mnt]' 'BG[$pid]'
            show_log "$lf"
            die "aimfs exited with status $rc before mounting $mnt (log: $lf)"
        fi
        ((SECONDS >= deadline)) && { show_log "$lf"; die "aimfs (PID $pid) did not mount $mnt within 30 s"; }
        sleep 0.05
    done
    MNT_PID=$pid
}

DAEMON_RC=""
unmount_fuse() { # MOUNTPOINT -> DAEMON_RC
    local mnt=$1 pid=${MOUNTS[$1]:-} tries
    DAEMON_RC=""
    if is_mounted "$mnt"; then
        for ((tries = 0; tries < 20; tries++)); do
            fusermount3 -u "$mnt" 2>/dev/null && break
            sleep 0.5
        done
        if is_mounted "$mnt"; then
            log "warning: $mnt still busy; detaching it lazily (fusermount3 -uz)"
            fusermount3 -uz "$mnt" || log "warning: could not unmount $mnt"
        fi
    fi
    if [[ -n $pid ]]; then
        # aimfs drains nothing at unmount beyond sealing; give it time anyway.
        if ! wait_exit "$pid" 120; then
            log "warning: aimfs PID $pid still running 120 s after the unmount; SIGTERM"
            stop_pid "$pid" 10
        fi
        wait "$pid" 2>/dev/null
        DAEMON_RC=$?
        unset 'BG[$pid]'
    fi
    unset 'MOUNTS[$mnt]'
}

# ---------------------------------------------------------------- loop devices
LOOP_DEV="" LOOP_DIO=""
loop_attach() { # FILE -> LOOP_DEV, LOOP_DIO (on|off)
    LOOP_DEV=$(losetup --find --show --direct-io=on "$1" 2>/dev/null) && LOOP_DIO=on
    if [[ -z $LOOP_DEV ]]; then
        LOOP_DEV=$(losetup --find --show "$1") || die "losetup failed for $1"
        LOOP_DIO=off
    fi
    LOOPS+=("$LOOP_DEV")
}
loop_detach_all() {
    local d
    for d in "${LOOPS[@]}"; do
        [[ -n $d ]] || continue
        losetup -d "$d" 2>/dev/null || log "warning: losetup -d $d failed"
    done
    LOOPS=()
}

# ---------------------------------------------------------------- misc
# A virtio balloon with free page reporting (feature bit 5) hands pages freed
# in the guest back to the host about 2 s after they are freed; touching one
# again is then a host fault, and page-cache writes run at ~0.4 GB/s instead
# of ~1.7 GB/s.  A run started right after drop_caches reuses pages not yet
# handed back and one started seconds later does not, so without a settle
# the side measured first wins by up to 4x.  Every measured step therefore
# starts after MEM_SETTLE seconds: both sides pay the same host faults.
balloon_reports_free_pages() {
    local f
    for f in /sys/bus/virtio/drivers/virtio_balloon/*/features; do
        [[ -r $f ]] || continue
        [[ $(cut -c6 "$f") == 1 ]] && return 0
    done
    return 1
}
if balloon_reports_free_pages; then MEM_SETTLE=${MEM_SETTLE:-4}; else MEM_SETTLE=${MEM_SETTLE:-0}; fi
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches || die "cannot write /proc/sys/vm/drop_caches"
}
# After drop_caches and whatever the step reads into the cache beforehand.
settle_memory() { [[ $MEM_SETTLE == 0 ]] || sleep "$MEM_SETTLE"; }
# Reads files into the page cache (as segments a receiver just wrote would be).
warm() { cat "$@" >/dev/null; }

fio_bg() { # STDERR_FILE FIO_ARGS... -> fio's exit status; in the background so signals reach the traps
    local errf=$1 rc
    shift
    (cd "${FIO_CWD:-/}" && exec fio "$@") >"$errf" 2>&1 &
    FIO_PID=$!
    wait "$FIO_PID"
    rc=$?
    FIO_PID=""
    return "$rc"
}

size_bytes() { numfmt --from=iec "${1^^}"; }

bench_cleanup() {
    local rc=$?
    [[ $CLEANING == 1 ]] && return
    CLEANING=1
    trap '' INT TERM
    if [[ -n $FIO_PID ]] && kill -0 "$FIO_PID" 2>/dev/null; then
        log "stopping fio (PID $FIO_PID)"
        stop_pid "$FIO_PID" 15
    fi
    local m p
    for m in "${!MOUNTS[@]}"; do
        log "unmounting $m"
        unmount_fuse "$m"
    done
    for p in "${!BG[@]}"; do
        log "stopping ${BG[$p]} (PID $p)"
        stop_pid "$p" 20
    done
    loop_detach_all
    if [[ -n $NETNS ]]; then
        ip netns del "$NETNS" 2>/dev/null || log "warning: could not delete network namespace $NETNS"
    fi
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then
        local busy=0
        while read -r m; do
            [[ $m == "$SCRATCH"/* ]] && busy=1 && log "warning: $m is still mounted"
        done < <(awk '{print $5}' /proc/self/mountinfo)
        if [[ $busy == 0 ]]; then
            rm -rf --one-file-system "$SCRATCH"
        else
            log "warning: leaving $SCRATCH in place because something is still mounted in it"
        fi
    fi
    if [[ -n ${SUDO_UID:-} && -n ${RAW:-} && -d $RAW ]]; then
        chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$RAW" "$OUT" "$OUT_JSON" 2>/dev/null
    fi
    exit "$rc"
}

# Facts about the machine, as KEY<TAB>VALUE lines in META_TSV.
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META_TSV"; }
meta_machine() {
    meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    meta command "$CMDLINE"
    meta host "$(hostname)"
    meta nproc "$(nproc)"
    meta cpu "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
    meta memory "$(awk '/^MemTotal:/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    meta kernel "$(uname -r)"
    meta virt "$(systemd-detect-virt 2>/dev/null || echo unknown)"
    meta loadavg_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"
    meta scratch "$SCRATCH"
    meta fs "$(findmnt -no FSTYPE,SOURCE,OPTIONS -T "$SCRATCH" | head -n1)"
    meta memory_settle "$(balloon_reports_free_pages && echo "virtio balloon reports free pages to the host: each measured step starts ${MEM_SETTLE} s after its cache drop and warm-up, so both sides touch pages the host took back" || echo "${MEM_SETTLE} s (no free page reporting)")"
    meta dirty "dirty_ratio=$(cat /proc/sys/vm/dirty_ratio) dirty_background_ratio=$(cat /proc/sys/vm/dirty_background_ratio)"
    meta fio "$(fio --version)"
    meta curl "$(curl --version | head -n1)"
    meta aimfs_git "$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo unknown)"
    meta build "$BUILD"
    meta buildtype "$BUILDTYPE"
}

# The build to measure: DIR/aimfs/aimfs, DIR/tools/aimctl, DIR/remote/aim-remote.
BUILDTYPE=""
find_build() { # DIR
    BUILD=$(readlink -f "$1") || die "no build directory $1"
    AIMFS="$BUILD/aimfs/aimfs" AIMCTL="$BUILD/tools/aimctl" AIM_REMOTE="$BUILD/remote/aim-remote"
    local b
    for b in "$AIMFS" "$AIMCTL" "$AIM_REMOTE"; do
        [[ -x $b ]] || die "$b not found
  build it first:  cd $REPO_DIR && meson setup build-perf --buildtype=release && ninja -C build-perf
  or choose one:   --build DIR"
    done
    BUILDTYPE=$(meson introspect --buildoptions "$BUILD" 2>/dev/null |
        "$PY" -c 'import json,sys; print(next((o["value"] for o in json.load(sys.stdin) if o["name"]=="buildtype"), "?"))' 2>/dev/null)
    [[ -n $BUILDTYPE ]] || BUILDTYPE="?"
    [[ $BUILDTYPE == release ]] || log "warning: $BUILD is a '$BUILDTYPE' build; benchmark a release build (meson setup build-perf --buildtype=release)"
}

default_build() {
    if [[ -x $REPO_DIR/build-perf/aimfs/aimfs ]]; then printf '%s' "$REPO_DIR/build-perf"; else printf '%s' "$REPO_DIR/build"; fi
}

# ---------------------------------------------------------------- costs
# CPU time (user + system, all threads) of running processes, in clock
# ticks; a PID that is gone counts 0.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # PID... -> ticks
    local pid sum=0 f
    for pid in "$@"; do
        [[ -n $pid && -r /proc/$pid/stat ]] || continue
        # fields after the ")" that ends comm: utime is the 12th, stime the 13th
        f=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a f <<<"$f"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}
# This shell's reaped children's CPU time so far, in ms: bash's `times`, run
# in this shell (a subshell's counters start at zero), its second line;
# the locale may print a decimal comma.
children_cpu_ms() { # -> CHILDREN_CPU_MS
    local tf="${SCRATCH:-/tmp}/.times.$$" line ms=0 re='([0-9]+)m([0-9]+)[.,]([0-9]+)s'
    times >"$tf"
    line=$(tail -n1 "$tf")
    rm -f "$tf"
    while [[ $line =~ $re ]]; do
        ms=$((ms + 10#${BASH_REMATCH[1]} * 60000 + 10#${BASH_REMATCH[2]} * 1000 + 10#${BASH_REMATCH[3]:0:3}))
        line=${line#*"${BASH_REMATCH[0]}"}
    done
    CHILDREN_CPU_MS=$ms
}
# The block device (whole disk or partition) that holds a directory, if it is
# one the kernel keeps I/O counters for; empty otherwise (overlay, tmpfs...).
disk_of() { # DIR -> name under /sys/class/block, or ""
    local src name
    src=$(findmnt -no SOURCE -T "$1" 2>/dev/null) || return 0
    src=${src%%\[*} # btrfs: /dev/vda2[/@]
    [[ -b $src ]] || return 0
    name=$(lsblk -ndo KNAME "$src" 2>/dev/null) # /dev/mapper/x -> dm-0
    [[ -n $name && -r /sys/class/block/$name/stat ]] && echo "$name"
    return 0
}
# Bytes written to that device so far (the 7th field counts 512-byte sectors).
disk_written_bytes() { # NAME
    local f
    read -r -a f <"/sys/class/block/$1/stat"
    echo $((f[6] * 512))
}

# Makes the throwaway PKI (CA, server cert for 127.0.0.1, client cert, token).
make_pki() { # DIR
    "$REPO_DIR/scripts/mkpki.sh" "$1" >/dev/null || die "scripts/mkpki.sh failed"
}

# aim-remote in the namespace; waits for its status listener (and receiver).
# start_remote LOGFILE ARGS... -> REMOTE_PID
REMOTE_PID=""
start_remote() {
    local lf=$1 deadline
    shift
    start_bg aim-remote "$lf" "${INNS[@]}" "$AIM_REMOTE" "$@"
    REMOTE_PID=$BG_PID
    deadline=$((SECONDS + 20))
    until inns curl -sf -o /dev/null "http://$REMOTE_STATUS/status"; do
        alive "$REMOTE_PID" || { show_log "$lf"; die "aim-remote exited at start (log: $lf)"; }
        ((SECONDS >= deadline)) && { show_log "$lf"; die "aim-remote did not answer on $REMOTE_STATUS within 20 s"; }
        sleep 0.05
    done
}
stop_remote() {
    stop_pid "$REMOTE_PID" 60
    [[ $STOP_RC == 0 ]] || log "warning: aim-remote exited with status $STOP_RC"
    REMOTE_PID=""
}

# Waits until a TCP port answers in the namespace.
wait_port() { # PORT PID WHAT LOG
    local deadline=$((SECONDS + 20))
    until inns bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; do
        alive "$2" || { show_log "$4"; die "$3 exited at start (log: $4)"; }
        ((SECONDS >= deadline)) && { show_log "$4"; die "$3 did not listen on port $1 within 20 s"; }
        sleep 0.05
    done
}

# perf record while a measured step runs (--profile): the whole system (a
# -p PID record misses threads the daemon starts later), reported for PID.
PROF_PID="" PROF_TARGET=""
profile_start() { # PID OUTFILE
    [[ ${PROFILE:-0} == 1 ]] || return 0
    command -v perf >/dev/null || { log "warning: perf not found; --profile ignored"; PROFILE=0; return 0; }
    PROF_TARGET=$1
    perf record -q --no-buildid-cache -a -g -F 499 -o "$2" >/dev/null 2>&1 &
    PROF_PID=$!
    BG[$PROF_PID]=perf
    sleep 1 # perf needs a moment before it samples
}
profile_stop() { # OUTFILE -> OUTFILE.txt: where PID spent its time (self, by symbol)
    [[ -n $PROF_PID ]] || return 0
    kill -INT "$PROF_PID" 2>/dev/null
    wait_exit "$PROF_PID" 60 || kill -KILL "$PROF_PID" 2>/dev/null
    wait "$PROF_PID" 2>/dev/null
    unset 'BG[$PROF_PID]'
    PROF_PID=""
    profile_report "$1" "$PROF_TARGET" >"$1.txt" || true
}
profile_report() { # PERFFILE PID -> where PID spent its time (self, by symbol)
    echo "# perf report --pid $2 --no-children --sort comm,dso,symbol (top 60)"
    perf report -i "$1" --pid "$2" --stdio --no-children --sort comm,dso,symbol -g none 2>/dev/null |
        grep -v '^#' | grep '%' | head -n 60
}

# In an option loop: dies unless the option ($1) has an argument ($2).
need_arg() { [[ $# -ge 2 ]] || die "option $1 needs an argument (see --help)"; }

# TESTS from the comma-separated TESTS_ARG, each one of ALL_TESTS; has_test NAME.
select_tests() {
    local t _t
    TESTS=()
    IFS=',' read -r -a _t <<<"$TESTS_ARG"
    for t in "${_t[@]}"; do
        [[ -z $t ]] && continue
        [[ " $ALL_TESTS " == *" $t "* ]] || die "unknown test '$t' (known: ${ALL_TESTS// /,})"
        TESTS+=("$t")
    done
    ((${#TESTS[@]})) || die "--tests is empty"
}
has_test() { [[ " ${TESTS[*]} " == *" $1 "* ]]; }

# A fresh SCRATCH in BASE_DIR, the report OUT (default results/KIND-<date>.md)
# with OUT_JSON and RAW next to it, RAW's SUBDIRS made, RUNS and META_TSV empty.
# make_scratch_and_output KIND SUBDIR...
make_scratch_and_output() {
    local kind=$1 d
    shift
    SCRATCH=$(mktemp -d "$BASE_DIR/aimfs-$kind-bench.XXXXXX") || die "cannot create a scratch directory in $BASE_DIR"
    SCRATCH=$(readlink -f "$SCRATCH")
    STAMP=$(date +%Y%m%d-%H%M%S)
    [[ -n $OUT ]] || OUT="$SCRIPT_DIR/results/$kind-$STAMP.md"
    [[ $OUT == *.md ]] || OUT="$OUT.md"
    mkdir -p "$(dirname "$OUT")" || die "cannot create $(dirname "$OUT")"
    OUT=$(readlink -f "$OUT")
    OUT_JSON="${OUT%.md}.json"
    RAW="${OUT%.md}.raw"
    if [[ -e $RAW ]]; then
        [[ -f $RAW/runs.jsonl || -f $RAW/meta.tsv ]] || die "$RAW exists and is not from this script; choose another --out"
        rm -rf "$RAW"
    fi
    for d in "$@"; do
        mkdir -p "$RAW/$d" || die "cannot create $RAW/$d"
    done
    RUNS="$RAW/runs.jsonl"
    META_TSV="$RAW/meta.tsv"
    : >"$RUNS"
    : >"$META_TSV"
}
