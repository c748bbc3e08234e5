#!/usr/bin/env bash
# fs-bench.sh - reproducible fio benchmark: aimfs against the backing filesystem
# itself ("direct") and against bindfs (a plain FUSE passthrough), all on the
# same backing directory. See bench/README.md.
#
#   sudo bench/fs-bench.sh [--quick] [--targets direct,aimfs,bindfs,bindfs-odirect] ...
#
# Needs root (drop_caches, FUSE mounts), fio, fusermount3, /usr/bin/python3 and,
# for the bindfs targets, bindfs. Everything it mounts is unmounted and its
# scratch directory removed on exit, on error and on Ctrl-C.

set -uo pipefail

PROG=fs-bench
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
HELPER="$SCRIPT_DIR/fs-bench-report.py"
PY=/usr/bin/python3
ALL_TARGETS="direct aimfs bindfs bindfs-odirect"

# The exact command line, for the report ("cd REPO && sudo bench/fs-bench.sh ...").
shq() { if [[ $1 =~ ^[A-Za-z0-9_./,=:+@%^-]+$ ]]; then printf '%s' "$1"; else printf '%q' "$1"; fi; }
CMDLINE="cd $(shq "$REPO_DIR") && sudo bench/fs-bench.sh"
for a in "$@"; do CMDLINE+=" $(shq "$a")"; done

usage() {
    cat <<EOF
usage: sudo $0 [options]

  --aimfs PATH       aimfs binary (default: $REPO_DIR/build/aimfs/aimfs)
  --aimfs-opts OPTS  extra -o options for aimfs, e.g. status=off (default: none)
  --aimfs-base PATH  another aimfs binary (e.g. the build before a change), measured
                     as target aimfs-base in the same rounds, with the same options;
                     the report adds each job's aimfs / aimfs-base ratio
  --aimfs-base-opts OPTS
                     -o options for aimfs-base instead of --aimfs-opts, to compare
                     two settings of one binary (e.g. --aimfs-base build/aimfs/aimfs
                     --aimfs-base-opts max_threads=2)
  --dir DIR          create the scratch directory inside DIR, which must be on the
                     filesystem under test (default: a fresh directory under /var/tmp)
  --runtime SECONDS  measured time per fio job (default 20; plus --ramp-time)
  --ramp-time SECS   fio --ramp_time, not measured (default 2)
  --rounds N         rounds; the report gives the median per job and target (default 3)
  --size SIZE        file size per fio job, fio syntax (default 1G)
  --quick            smoke test: runtime 5, rounds 1, size 256M (explicit options win)
  --targets LIST     comma-separated subset of: ${ALL_TARGETS// /,}
                     (default: all)
  --jobs REGEX       only the jobs whose id matches (bash regex), e.g. '^odirect-psync/'
  --out FILE         markdown report (default: bench/results/fs-<date>.md); next to it
                     go FILE.json (all numbers) and FILE.raw/ (fio JSON, daemon logs)
  -h, --help         this text
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------- options
AIMFS="$REPO_DIR/build/aimfs/aimfs"
AIMFS_BASE=""
AIMFS_OPTS=""
AIMFS_BASE_OPTS=""
AIMFS_BASE_OPTS_SET=""
BASE_DIR=""
OPT_RUNTIME="" OPT_ROUNDS="" OPT_SIZE="" QUICK=0
RAMP=2
TARGETS_ARG="${ALL_TARGETS// /,}"
JOBS_RE=""
OUT=""

need_arg() { [[ $# -ge 2 ]] || die "option $1 needs an argument (see --help)"; }
while [[ $# -gt 0 ]]; do
    opt=$1
    if [[ $opt == --*=* ]]; then # --opt=value form
        set -- "${opt%%=*}" "${opt#*=}" "${@:2}"
        opt=$1
    fi
    case $opt in
    --aimfs) need_arg "$@"; AIMFS=$2; shift 2 ;;
    --aimfs-opts) need_arg "$@"; AIMFS_OPTS=$2; shift 2 ;;
    --aimfs-base) need_arg "$@"; AIMFS_BASE=$2; shift 2 ;;
    --aimfs-base-opts) need_arg "$@"; AIMFS_BASE_OPTS=$2; AIMFS_BASE_OPTS_SET=1; shift 2 ;;
    --dir) need_arg "$@"; BASE_DIR=$2; shift 2 ;;
    --runtime) need_arg "$@"; OPT_RUNTIME=$2; shift 2 ;;
    --ramp-time) need_arg "$@"; RAMP=$2; shift 2 ;;
    --rounds) need_arg "$@"; OPT_ROUNDS=$2; shift 2 ;;
    --size) need_arg "$@"; OPT_SIZE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --targets) need_arg "$@"; TARGETS_ARG=$2; shift 2 ;;
    --jobs) need_arg "$@"; JOBS_RE=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $opt" ;;
    esac
done

if [[ $QUICK == 1 ]]; then
    RUNTIME=${OPT_RUNTIME:-5} ROUNDS=${OPT_ROUNDS:-1} SIZE=${OPT_SIZE:-256M}
else
    RUNTIME=${OPT_RUNTIME:-20} ROUNDS=${OPT_ROUNDS:-3} SIZE=${OPT_SIZE:-1G}
fi
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive integer (seconds), not '$RUNTIME'"
[[ $RAMP =~ ^[0-9]+$ ]] || die "--ramp-time must be an integer (seconds), not '$RAMP'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, not '$ROUNDS'"
[[ $SIZE =~ ^[1-9][0-9]*[KkMmGgTt]?$ ]] || die "--size must look like 256M or 1G, not '$SIZE'"
SIZE_BYTES=$(numfmt --from=iec "${SIZE^^}") || die "cannot parse --size '$SIZE'"

TARGETS=()
IFS=',' read -r -a _t <<<"$TARGETS_ARG"
for t in "${_t[@]}"; do
    [[ -z $t ]] && continue
    [[ " $ALL_TARGETS aimfs-base " == *" $t "* ]] || die "unknown target '$t' (known: ${ALL_TARGETS// /,})"
    [[ " ${TARGETS[*]-} " == *" $t "* ]] && die "target '$t' given twice"
    TARGETS+=("$t")
done
[[ ${#TARGETS[@]} -gt 0 ]] || die "--targets is empty"
has_target() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------- jobs
# Job id = MODE/PATTERN. Same file names in every job (fio: NAME.JOBNUM.FILENUM),
# so every job of every target runs on the same, already laid out files.
declare -A MODE_ARGS=(
    [odirect-psync]="--direct=1 --ioengine=psync"
    [odirect-aio16]="--direct=1 --ioengine=libaio --iodepth=16"
    [buffered]="--direct=0 --ioengine=psync"
)
MODES=(odirect-psync odirect-aio16 buffered)
declare -A PATTERN_ARGS=(
    [seq-write-1M]="--rw=write --bs=1M --numjobs=1"
    [rand-write-4k]="--rw=randwrite --bs=4k --numjobs=1"
    [rand-write-4k-2j]="--rw=randwrite --bs=4k --numjobs=2"
    [seq-read-1M]="--rw=read --bs=1M --numjobs=1"
    [rand-read-4k]="--rw=randread --bs=4k --numjobs=1"
    # a database's commits: every write followed by an fsync
    [rand-write-4k-fsync]="--rw=randwrite --bs=4k --numjobs=1 --fsync=1"
)
PATTERNS=(seq-write-1M rand-write-4k rand-write-4k-2j seq-read-1M rand-read-4k rand-write-4k-fsync)
JOBS=()
for m in "${MODES[@]}"; do
    for p in "${PATTERNS[@]}"; do
        id="$m/$p"
        if [[ -n $JOBS_RE ]] && ! [[ $id =~ $JOBS_RE ]]; then continue; fi
        JOBS+=("$id")
    done
done
[[ ${#JOBS[@]} -gt 0 ]] || die "--jobs '$JOBS_RE' matches no job (ids look like odirect-psync/seq-write-1M)"

fio_job_args() { # JOB_ID -> fio arguments (word-split by the caller)
    local mode=${1%%/*} pat=${1#*/}
    local a="${MODE_ARGS[$mode]} ${PATTERN_ARGS[$pat]}"
    # Buffered writes: the final fsync is part of the job (its time is counted).
    if [[ $mode == buffered && $pat == *write* ]]; then a+=" --end_fsync=1"; fi
    printf '%s' "$a"
}

# ---------------------------------------------------------------- preflight
[[ $EUID -eq 0 ]] || die "needs root (drop_caches, FUSE mounts): run 'sudo $0 $*'"
[[ -x $PY ]] || die "$PY not found (python3 is needed for the report)"
[[ -r $HELPER ]] || die "helper $HELPER is missing"
for c in fio fusermount3 mountpoint findmnt numfmt; do
    command -v "$c" >/dev/null || die "'$c' not found (apt-get install -y fio fuse3 util-linux coreutils)"
done
if { has_target aimfs || has_target aimfs-base || has_target bindfs || has_target bindfs-odirect; } && [[ ! -c /dev/fuse ]]; then
    die "/dev/fuse is missing: the FUSE targets cannot be mounted"
fi
if has_target bindfs || has_target bindfs-odirect; then
    command -v bindfs >/dev/null || die "bindfs not found (apt-get install -y bindfs), or leave the bindfs targets out of --targets"
fi
if [[ -n $AIMFS_BASE ]] && ! has_target aimfs-base; then
    TARGETS+=(aimfs-base)
fi
if has_target aimfs-base; then
    [[ -n $AIMFS_BASE ]] || die "target aimfs-base needs --aimfs-base PATH"
    [[ -x $AIMFS_BASE && -f $AIMFS_BASE ]] || die "--aimfs-base $AIMFS_BASE is not an executable file"
    AIMFS_BASE=$(readlink -f "$AIMFS_BASE")
fi
if has_target aimfs; then
    if [[ ! -e $AIMFS ]]; then
        die "aimfs binary not found at $AIMFS
  build it first:   cd $REPO_DIR && meson setup build && ninja -C build
  or point to it:   --aimfs PATH
  or leave it out:  --targets direct,bindfs,bindfs-odirect"
    fi
    [[ -x $AIMFS && -f $AIMFS ]] || die "aimfs at $AIMFS is not an executable file"
    AIMFS=$(readlink -f "$AIMFS")
fi
fio --enghelp=libaio >/dev/null 2>&1 || {
    [[ " ${JOBS[*]} " == *odirect-aio16* ]] && die "this fio has no libaio engine (needed by the odirect-aio16 jobs; --jobs can leave them out)"
}

# ---------------------------------------------------------------- cleanup
SCRATCH="" OUT="${OUT:-}" OUT_JSON="" RAW="" RUNS_TSV=""
declare -A MOUNTS=() # mountpoint -> PID of its FUSE daemon (our child, run with -f)
FIO_PID=""
CLEANING=0

wait_exit() { # PID TIMEOUT_S -> 0 if the process is gone within the timeout
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        # A zombie child counts as gone (we reap it with wait afterwards).
        [[ $(awk '/^State:/{print $2}' "/proc/$pid/status" 2>/dev/null) == Z ]] && return 0
        ((SECONDS >= deadline)) && return 1
        sleep 0.1
    done
    return 0
}

DAEMON_RC="-"
unmount_fuse() { # MOUNTPOINT -> sets DAEMON_RC to the daemon's exit status
    local mnt=$1 pid=${MOUNTS[$1]:-} tries
    DAEMON_RC="-"
    if is_mounted "$mnt"; then
        for ((tries = 0; tries < 10; tries++)); do
            fusermount3 -u "$mnt" 2>/dev/null && break
            sleep 1
        done
        if is_mounted "$mnt"; then
            log "warning: $mnt is still busy after 10 s, detaching it lazily (fusermount3 -uz)"
            fusermount3 -uz "$mnt" || log "warning: could not unmount $mnt"
        fi
    fi
    if [[ -n $pid ]]; then
        if ! wait_exit "$pid" 60; then
            log "warning: FUSE daemon PID $pid did not exit within 60 s of the unmount; sending SIGTERM"
            kill -TERM "$pid" 2>/dev/null
            wait_exit "$pid" 10 || { log "warning: PID $pid still alive; SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
        fi
        wait "$pid" 2>/dev/null
        DAEMON_RC=$?
    fi
    unset 'MOUNTS[$mnt]'
}

cleanup() {
    local rc=$?
    [[ $CLEANING == 1 ]] && return
    CLEANING=1
    trap '' INT TERM
    if [[ -n $FIO_PID ]] && kill -0 "$FIO_PID" 2>/dev/null; then
        log "stopping fio (PID $FIO_PID)"
        kill -TERM "$FIO_PID" 2>/dev/null
        wait_exit "$FIO_PID" 15 || kill -KILL "$FIO_PID" 2>/dev/null
        wait "$FIO_PID" 2>/dev/null
    fi
    local m
    for m in "${!MOUNTS[@]}"; do
        log "unmounting $m"
        unmount_fuse "$m"
    done
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then
        local busy=0
        for m in "$SCRATCH"/mnt-*; do
            [[ -d $m ]] && is_mounted "$m" && busy=1 && log "warning: $m is still mounted"
        done
        if [[ $busy == 0 ]]; then
            rm -rf --one-file-system "$SCRATCH"
        else
            log "warning: leaving $SCRATCH in place because something is still mounted in it"
        fi
    fi
    # Results belong to whoever ran sudo.
    if [[ -n ${SUDO_UID:-} && -n $RAW && -d $RAW ]]; then
        chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$RAW" 2>/dev/null
        chown "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$OUT" "$OUT_JSON" 2>/dev/null
    fi
    exit "$rc"
}
# What has been measured so far, when the run stops early.
partial_report() {
    if [[ -f $RUNS_TSV && $(wc -l <"$RUNS_TSV") -gt 1 ]]; then
        "$PY" "$HELPER" report --raw "$RAW" --md "$OUT" --json "$OUT_JSON" --partial >/dev/null 2>&1 &&
            log "partial report of the completed runs: $OUT"
    fi
}
fail() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    partial_report
    exit 1
}
trap cleanup EXIT
trap 'log "interrupted (SIGINT)"; partial_report; exit 130' INT
trap 'log "terminated (SIGTERM)"; partial_report; exit 143' TERM

# Scratch directory (always a fresh one we created, so we only ever remove our own).
if [[ -z $BASE_DIR ]]; then BASE_DIR=/var/tmp; fi
[[ -d $BASE_DIR ]] || die "--dir $BASE_DIR is not a directory"
SCRATCH=$(mktemp -d "$BASE_DIR/aimfs-bench.XXXXXX") || die "cannot create a scratch directory in $BASE_DIR"
SCRATCH=$(readlink -f "$SCRATCH")
BACKING="$SCRATCH/backing"
# aimfs gets files of its own, laid out the same way on the same filesystem:
# it notices a file changed behind its back between two of its mounts (the
# other targets' writes) and journals it whole again at the next mount, which
# would land in the middle of every aimfs job.
AIMFS_BACKING="$SCRATCH/backing-aimfs"
JOURNAL="$AIMFS_BACKING/.aimfs"
if [[ $AIMFS_OPTS =~ (^|,)journal=([^,]*) ]]; then JOURNAL=${BASH_REMATCH[2]}; fi

# Output files.
STAMP=$(date +%Y%m%d-%H%M%S)
[[ -n $OUT ]] || OUT="$SCRIPT_DIR/results/fs-$STAMP.md"
[[ $OUT == *.md ]] || OUT="$OUT.md"
mkdir -p "$(dirname "$OUT")" || die "cannot create $(dirname "$OUT")"
OUT=$(readlink -f "$OUT")
OUT_JSON="${OUT%.md}.json"
RAW="${OUT%.md}.raw"
if [[ -e $RAW ]]; then
    # Only ever replace a raw directory of an earlier run of this script.
    [[ -f $RAW/runs.tsv ]] || die "$RAW exists and is not from this script; choose another --out"
    rm -rf "$RAW"
fi
mkdir -p "$RAW/fio" "$RAW/logs" || die "cannot create $RAW"
RUNS_TSV="$RAW/runs.tsv"
META_TSV="$RAW/meta.tsv"
printf 'round\tseq\tjob\ttarget\tfio_json\tfio_rc\tvmhwm_kb\tdaemon_rc\tjournal_seg_bytes\tjournal_dir_bytes\tjournal_files\n' >"$RUNS_TSV"


# ---------------------------------------------------------------- mounts
daemon_log() { printf '%s/logs/%s.log' "$RAW" "$1"; }

show_log() { # FILE
    printf -- '---- last lines of %s ----\n' "$1" >&2
    tail -n 40 "$1" >&2 2>/dev/null
    printf -- '----\n' >&2
}

MNT_PID=""
mount_fuse() { # TARGET MOUNTPOINT LOGFILE -> sets MNT_PID
    local target=$1 mnt=$2 lf=$3 pid deadline
    mkdir -p "$mnt"
    is_mounted "$mnt" && fail "$mnt is already a mount point"
    local -a cmd
    case $target in
    aimfs | aimfs-base)
        local opts=$AIMFS_OPTS
        if [[ $target == aimfs ]]; then
            cmd=("$AIMFS" -f)
        else
            cmd=("$AIMFS_BASE" -f)
            [[ -n $AIMFS_BASE_OPTS_SET ]] && opts=$AIMFS_BASE_OPTS
        fi
        [[ -n $opts ]] && cmd+=(-o "$opts")
        cmd+=("$AIMFS_BACKING" "$mnt")
        ;;
    bindfs) cmd=(bindfs -f "$BACKING" "$mnt") ;;
    bindfs-odirect) cmd=(bindfs --forward-odirect=4096 -f "$BACKING" "$mnt") ;;
    *) fail "internal: no mount for $target" ;;
    esac
    printf '==== %s: %s\n' "$(date +%T)" "${cmd[*]}" >>"$lf"
    "${cmd[@]}" >>"$lf" 2>&1 &
    pid=$!
    MOUNTS[$mnt]=$pid
    deadline=$((SECONDS + 20))
    until mountpoint -q "$mnt"; do
        if ! kill -0 "$pid" 2>/dev/null || [[ $(awk '/^State:/{print $2}' "/proc/$pid/status" 2>/dev/null) == Z ]]; then
            wait "$pid" 2>/dev/null
            local rc=$?
            unset 'MOUNTS[$mnt]'
            show_log "$lf"
            fail "$target exited with status $rc before the mount appeared (command line and log above: $lf)"
        fi
        if ((SECONDS >= deadline)); then
            show_log "$lf"
            fail "$target (PID $pid) did not mount $mnt within 20 s (log: $lf)"
        fi
        sleep 0.1
    done
    MNT_PID=$pid
}

# From the mount table, without touching the mount point (a dead FUSE daemon leaves
# a mount whose stat fails with ENOTCONN, which mountpoint(1) reports as "not mounted").
is_mounted() {
    MP="${1// /\\040}" awk '$5 == ENVIRON["MP"] { found = 1 } END { exit !found }' /proc/self/mountinfo
}

vmhwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null || true; }

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches || fail "cannot write /proc/sys/vm/drop_caches"
}

# Journal accounting for aimfs: bytes of segment files and of the whole journal
# directory, then remove the segments (only ever while unmounted).
J_SEG=0 J_DIR=0 J_FILES=0
journal_account_and_trim() {
    J_SEG=0 J_DIR=0 J_FILES=0
    [[ -d $JOURNAL ]] || return 0
    # Sealed segments are *.aimj; *.open is a segment that was not sealed (none after a
    # clean unmount, but count and remove them too so they cannot pile up).
    J_SEG=$(find "$JOURNAL" -type f \( -name '*.aimj' -o -name '*.open' \) -printf '%s\n' | awk '{s+=$1} END{printf "%.0f\n", s}')
    J_FILES=$(find "$JOURNAL" -type f \( -name '*.aimj' -o -name '*.open' \) | wc -l)
    J_DIR=$(find "$JOURNAL" -type f -printf '%s\n' | awk '{s+=$1} END{printf "%.0f\n", s}')
    find "$JOURNAL" -type f \( -name '*.aimj' -o -name '*.open' \) -delete
}

# ---------------------------------------------------------------- one run
# fio in DIR, in the background so that a signal reaches our traps at once.
# fio quirk: without --filename, if a file named like the job exists in the
# current directory (this repository has bench/), fio uses that name as the
# file for every job. So: a job name of our own, run from DIR itself, and the
# file names spelled out: fsbench.0.0, fsbench.1.0.
FIO_NAME=fsbench
FILES=("$FIO_NAME.0.0" "$FIO_NAME.1.0")
run_fio() { # DIR STDERR_FILE FIO_ARGS... -> fio's exit status
    local dir=$1 errf=$2 rc
    shift 2
    (cd "$dir" && exec fio --name="$FIO_NAME" --directory="$dir" \
        --filename_format="\$jobname.\$jobnum.\$filenum" "$@") >"$errf" 2>&1 &
    FIO_PID=$!
    wait "$FIO_PID"
    rc=$?
    FIO_PID=""
    return "$rc"
}

# The backing directories must hold exactly the laid out files, at full size.
check_files() {
    local f extra b
    for b in "${BACKINGS[@]}"; do
        for f in "${FILES[@]}"; do
            [[ -f $b/$f ]] || fail "$b/$f is missing after $1"
            [[ $(stat -c %s "$b/$f") -ge $SIZE_BYTES ]] ||
                fail "$b/$f is $(stat -c %s "$b/$f") bytes after $1, expected $SIZE_BYTES"
        done
        extra=$(find "$b" -mindepth 1 -maxdepth 1 ! -name .aimfs ! -name "${FILES[0]}" ! -name "${FILES[1]}" -printf '%f ')
        [[ -z $extra ]] || fail "unexpected files in $b after $1: $extra"
    done
}

SEQ=0
run_one() { # ROUND JOB TARGET
    local round=$1 job=$2 target=$3 dir mnt="" lf="" pid="" hwm="-" rc
    local tag="r${round}_${job//\//_}_${target}"
    local json="fio/$tag.json" errf="$RAW/fio/$tag.stderr"
    SEQ=$((SEQ + 1))
    if [[ $target == direct ]]; then
        dir=$BACKING
    else
        mnt="$SCRATCH/mnt-$target"
        lf=$(daemon_log "$target")
        mount_fuse "$target" "$mnt" "$lf"
        pid=$MNT_PID
        dir=$mnt
    fi
    drop_caches
    # shellcheck disable=SC2046  # fio_job_args is meant to be word-split
    run_fio "$dir" "$errf" --size="$SIZE" $(fio_job_args "$job") \
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
        --group_reporting --output-format=json --output="$RAW/$json"
    rc=$?
    if [[ -n $pid ]] && { ! kill -0 "$pid" 2>/dev/null || ! mountpoint -q "$mnt" 2>/dev/null; }; then
        show_log "$errf"
        show_log "$lf"
        fail "$target (PID $pid) died or lost its mount during $job, round $round (log: $lf)"
    fi
    if [[ $rc -ne 0 ]]; then
        show_log "$errf"
        [[ -n $lf ]] && show_log "$lf"
        fail "fio failed (status $rc) for $job on $target, round $round (fio output: $errf)"
    fi
    local drc="-"
    if [[ -n $pid ]]; then
        hwm=$(vmhwm_kb "$pid")
        [[ -n $hwm ]] || hwm="-"
        unmount_fuse "$mnt"
        drc=$DAEMON_RC
        if [[ $drc != 0 ]]; then
            show_log "$lf"
            log "WARNING: $target exited with status $drc after unmount ($job, round $round); recorded in the report"
        fi
    fi
    local js="-" jd="-" jf="-"
    if [[ $target == aimfs || $target == aimfs-base ]]; then
        journal_account_and_trim
        js=$J_SEG jd=$J_DIR jf=$J_FILES
    fi
    check_files "$job on $target, round $round"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$SEQ" "$job" "$target" "$json" \
        "$rc" "$hwm" "$drc" "$js" "$jd" "$jf" >>"$RUNS_TSV"
    local v
    v=$("$PY" "$HELPER" metric "$RAW/$json" 2>/dev/null) || v="?"
    local extra=""
    [[ $hwm != - ]] && extra+="  VmHWM $((hwm / 1024)) MiB"
    [[ $js != - ]] && extra+="  journal $((js / 1000000)) MB in $jf segment(s)"
    log "$(printf 'round %d/%d  %-30s %-15s %s%s' "$round" "$ROUNDS" "$job" "$target" "$v" "$extra")"
}

# ---------------------------------------------------------------- machine info
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META_TSV"; }
: >"$META_TSV"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta command "$CMDLINE"
meta host "$(hostname)"
meta nproc "$(nproc)"
meta cpu "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
meta memory "$(awk '/^MemTotal:/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
meta kernel "$(uname -r)"
meta virt "$(systemd-detect-virt 2>/dev/null || echo unknown)"
meta scratch "$SCRATCH"
meta fs "$(findmnt -no FSTYPE,SOURCE,OPTIONS -T "$SCRATCH" | head -n1)"
meta dirty "dirty_ratio=$(cat /proc/sys/vm/dirty_ratio) dirty_background_ratio=$(cat /proc/sys/vm/dirty_background_ratio)"
meta fio "$(fio --version)"
if has_target bindfs || has_target bindfs-odirect; then
    meta bindfs "$(bindfs --version 2>&1 | head -n1)"
fi
if has_target aimfs; then
    meta aimfs "$AIMFS"
    meta aimfs_git "$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo unknown)"
    meta aimfs_binary "$(stat -c '%s bytes, modified %y' "$AIMFS")"
    meta aimfs_opts "${AIMFS_OPTS:-(none)}"
fi
if has_target aimfs-base; then
    meta aimfs_base "$AIMFS_BASE"
    [[ -n $AIMFS_BASE_OPTS_SET ]] && meta aimfs_base_opts "${AIMFS_BASE_OPTS:-(none)}"
    meta aimfs_base_binary "$(stat -c '%s bytes, modified %y' "$AIMFS_BASE")"
    meta journal "$JOURNAL"
fi
meta runtime "$RUNTIME"
meta ramp "$RAMP"
meta rounds "$ROUNDS"
meta size "$SIZE"
meta targets "${TARGETS[*]}"
meta jobs "${JOBS[*]}"
for j in "${JOBS[@]}"; do meta "fio:$j" "$(fio_job_args "$j") --size=$SIZE --time_based --runtime=$RUNTIME --ramp_time=$RAMP --group_reporting"; done

# ---------------------------------------------------------------- go
NRUNS=$((${#JOBS[@]} * ${#TARGETS[@]} * ROUNDS))
log "scratch $SCRATCH ($(findmnt -no FSTYPE -T "$SCRATCH")), results $OUT"
log "${#JOBS[@]} jobs x ${#TARGETS[@]} targets x $ROUNDS rounds = $NRUNS fio runs of $RUNTIME+$RAMP s, size $SIZE: about $((NRUNS * (RUNTIME + RAMP + 1) / 60 + 1)) min"

BACKINGS=("$BACKING")
if has_target aimfs || has_target aimfs-base; then BACKINGS+=("$AIMFS_BACKING"); fi
need=$((2 * ${#BACKINGS[@]} * SIZE_BYTES + 2 * 1024 * 1024 * 1024))
avail=$(($(stat -f -c '%a*%S' "$SCRATCH")))
((avail >= need)) || fail "not enough space in $SCRATCH: $((avail >> 20)) MiB free, need at least $((need >> 20)) MiB"
if has_target aimfs && ((avail < need + 2000000000 * (RUNTIME + RAMP))); then
    log "warning: only $((avail >> 30)) GiB free; one aimfs write job may journal up to ~$((2 * (RUNTIME + RAMP))) GB"
fi

# Lay out the data files (fsbench.0.0, fsbench.1.0) once, with real data, directly
# on the backing filesystem; every job of every target then overwrites or reads them
# (aimfs's targets their own copy, laid out the same way).
for b in "${BACKINGS[@]}"; do
    mkdir -p "$b"
    log "laying out 2 x $SIZE in $b"
    run_fio "$b" "$RAW/fio/layout-${b##*/}.stderr" --size="$SIZE" --numjobs=2 --rw=write --bs=1M \
        --direct=1 --ioengine=psync --end_fsync=1 --output-format=json \
        --output="$RAW/fio/layout-${b##*/}.json" ||
        { rc=$?; show_log "$RAW/fio/layout-${b##*/}.stderr"; fail "layout with fio failed (status $rc)"; }
done
check_files "the layout"

# Check that every FUSE target mounts before spending an hour. For aimfs this
# first mount after the layout also adopts the new files (aimfs journals the
# content of files it finds that were made behind its back); that journal is
# deleted here, so that it does not count against the first aimfs job.
for t in "${TARGETS[@]}"; do
    [[ $t == direct ]] && continue
    mount_fuse "$t" "$SCRATCH/mnt-$t" "$(daemon_log "$t")"
    for f in "${FILES[@]}"; do
        head -c 4096 "$SCRATCH/mnt-$t/$f" >/dev/null || fail "cannot read $f through the $t mount"
    done
    unmount_fuse "$SCRATCH/mnt-$t"
    [[ $DAEMON_RC == 0 ]] || { show_log "$(daemon_log "$t")"; fail "$t exited with status $DAEMON_RC after a plain mount/unmount"; }
    if [[ $t == aimfs || $t == aimfs-base ]]; then
        journal_account_and_trim
        log "preflight: aimfs mounts and unmounts cleanly (journaled $((J_SEG / 1000000)) MB while adopting the files, deleted)"
    else
        log "preflight: $t mounts and unmounts cleanly"
    fi
done

for ((r = 1; r <= ROUNDS; r++)); do
    for job in "${JOBS[@]}"; do
        # Alternate the targets within each job; rotate the starting target from
        # one round to the next so that no target is always first.
        n=${#TARGETS[@]}
        for ((k = 0; k < n; k++)); do
            run_one "$r" "$job" "${TARGETS[$(((k + r - 1) % n))]}"
        done
    done
done

"$PY" "$HELPER" report --raw "$RAW" --md "$OUT" --json "$OUT_JSON" || fail "report generation failed"
log "report: $OUT (numbers: $OUT_JSON, fio JSON and logs: $RAW/)"
