#!/usr/bin/python3
"""aimbench.py - helper of bench/remote-bench.sh, mirror-bench.sh and resync-bench.sh.

Subcommands (the scripts call them; each prints JSON or writes files):

  segstats DIR               what a set of segments holds (aimctl dump)
  apply-run ...              rename a staged group directory into an inbox, wait
                             until aim-remote has applied it, report the time
  wait-applied ...           wait until aim-remote's state DB shows an LSN applied
  poll ...                   poll a /status URL into a JSON-lines file until SIGTERM
  rpo ...                    recovery point per write (source time -> applied time)
  fio ...                    write metrics of a fio JSON output
  wait-sync ...              poll aimfs's /status until the destination is in sync,
                             then wait until aim-remote applied the head LSN
  layout ...                 write random data into scattered extents of files
                             (a sparse image, or changes to a replica and its copy)
  record FILE k=v ...        append a run record to FILE (JSON lines)
  report --kind remote|mirror|resync --raw DIR --md FILE --json FILE [--partial]

Only the Python standard library; nothing here talks to anything but
loopback addresses and local files.
"""
import argparse
import bisect
import calendar
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request


def die(msg):
    print(f"aimbench: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ------------------------------------------------------------------ segments

def iso_ns(s):
    """2026-11-25T19:21:00.073911863Z -> ns since the epoch (UTC)."""
    s = s.rstrip("Z")
    main, _, frac = s.partition(".")
    t = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    frac = (frac + "000000000")[:9]
    return t * 1_000_000_000 + int(frac)


def dump(aimctl, path, records=True):
    """(header dict, [(lsn, type, length, time_ns)]) from aimctl dump."""
    out = subprocess.run([aimctl, "dump", f"--records={'yes' if records else 'no'}", path],
                         check=True, capture_output=True, text=True).stdout
    head, recs = {}, []
    in_recs = False
    for line in out.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "LSN" and len(f) > 1 and f[1] == "TYPE":
            in_recs = True
            continue
        if not in_recs:
            head[f[0]] = " ".join(f[1:])
            continue
        if not f[0].isdigit():
            continue
        # LSN TYPE OFFSET LENGTH FLAGS TIME IMAGE...
        length = int(f[3]) if f[3].isdigit() else 0
        recs.append((int(f[0]), f[1], length, iso_ns(f[5]) if f[5] != "-" else 0))
    return head, recs


def seg_files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".aimj"))


def cmd_segstats(a):
    files = seg_files(a.dir)
    if not files:
        die(f"no segments in {a.dir}")
    st = {"segments": len(files), "bytes": 0, "records": 0, "writes": 0, "write_bytes": 0,
          "flushes": 0, "other_records": 0, "group": None, "first_lsn": None, "last_lsn": None,
          "files": [os.path.basename(f) for f in files]}
    for f in files:
        st["bytes"] += os.path.getsize(f)
        head, recs = dump(a.aimctl, f)
        st["group"] = head.get("group")
        lo, _, hi = head["lsn"].split()[0].partition("..")
        if st["first_lsn"] is None:
            st["first_lsn"] = int(lo)
        st["last_lsn"] = int(hi)
        for _, typ, length, _ in recs:
            st["records"] += 1
            if typ == "WRITE":
                st["writes"] += 1
                st["write_bytes"] += length
            elif typ == "FLUSH":
                st["flushes"] += 1
            else:
                st["other_records"] += 1
    # Durable points of the applier: every FLUSH barrier and every segment end
    # (consecutive ones on the same spot cost one fsync with nothing dirty).
    st["durable_points_max"] = st["flushes"] + st["segments"]
    json.dump(st, sys.stdout)
    print()


# ------------------------------------------------------------------ remote state

def state_db(path):
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def group_row(path, group):
    """(applied_lsn, status, error, max applied_ns of segments) or None."""
    if not os.path.exists(path):
        return None
    try:
        db = state_db(path)
        try:
            r = db.execute('SELECT applied_lsn, status, error FROM groups WHERE "group" = ?',
                           (group,)).fetchone()
            if r is None:
                return None
            t = db.execute('SELECT max(applied_ns) FROM segments WHERE "group" = ?',
                           (group,)).fetchone()[0]
            return r[0], r[1], r[2], t or 0
        finally:
            db.close()
    except sqlite3.Error:
        return None  # being created, or locked for a moment: ask again


def http_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def status_group(addr, group):
    for g in http_json(f"http://{addr}/status").get("groups", []):
        if g.get("group") == group:
            return g
    return None


def wait_applied(state, group, lsn, timeout, interval, pid=None):
    """Polls the state DB until applied_lsn >= lsn; returns (poll_ns, row)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        row = group_row(state, group)
        now = time.time_ns()
        if row is not None:
            last = row
            if row[0] >= lsn:
                return now, row
            if row[1] == "stopped" or row[2]:
                die(f"group {group} stopped in aim-remote: {row[2]}")
        if pid and not os.path.exists(f"/proc/{pid}"):
            die(f"aim-remote (PID {pid}) is gone")
        if time.monotonic() > deadline:
            die(f"timed out after {timeout}s waiting for LSN {lsn} of {group}; last state {last}")
        time.sleep(interval)


def cmd_apply_run(a):
    """t0: just before the rename that delivers the whole group directory
    into the inbox (what a receiver does one file at a time); t1: the time
    aim-remote recorded the last segment as applied, which it does after the
    targets are fsynced (state DB segments.applied_ns)."""
    t0 = time.time_ns()
    os.rename(a.stage, a.dest)
    poll_ns, row = wait_applied(a.state_db, a.group, a.lsn, a.timeout, a.interval, a.pid)
    t1 = row[3]
    res = {"t0_ns": t0, "t1_ns": t1, "poll_ns": poll_ns, "seconds": (t1 - t0) / 1e9,
           "poll_seconds": (poll_ns - t0) / 1e9, "applied_lsn": row[0]}
    if a.status:
        g = status_group(a.status, a.group)
        res["status"] = g
    json.dump(res, sys.stdout)
    print()


def cmd_wait_applied(a):
    poll_ns, row = wait_applied(a.state_db, a.group, a.lsn, a.timeout, a.interval, a.pid)
    json.dump({"poll_ns": poll_ns, "applied_lsn": row[0], "last_applied_ns": row[3]}, sys.stdout)
    print()


# ------------------------------------------------------------------ RPO

def cmd_poll(a):
    """Polls /status every --interval s; one JSON line per answer:
    {"t": ns, "lsn": applied_lsn, "src": last_applied_source_time}."""
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    with open(a.out, "w") as out:
        while not stop[0]:
            t = time.time_ns()
            try:
                g = status_group(a.status, a.group)
                if g is not None:
                    out.write(json.dumps({"t": t, "t_done": time.time_ns(),
                                          "lsn": g.get("applied_lsn", 0),
                                          "src": g.get("last_applied_source_time")}) + "\n")
            except OSError:
                pass
            time.sleep(a.interval)


def pct(xs, p):
    """Nearest-rank percentile of a sorted list."""
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(-(-p * len(xs) // 100)) - 1))
    return xs[k]


def dist(xs):
    xs = sorted(xs)
    if not xs:
        return {"count": 0}
    return {"count": len(xs), "p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99),
            "max": xs[-1], "min": xs[0], "mean": statistics.fmean(xs)}


def cmd_rpo(a):
    """Per write: applied time - source write time.
    state method: the write's segment's applied_ns from aim-remote's state
      DB (recorded after the targets were fsynced at the segment's end; a
      write made durable earlier at a barrier inside the segment is counted
      at the segment's end, so this is an upper bound);
    poll method: the first /status answer whose applied_lsn covers the
      write (resolution: the poll interval plus one request)."""
    db = state_db(a.state_db)
    applied = {n: (lo, hi, t) for n, lo, hi, t in db.execute(
        'SELECT number, first_lsn, last_lsn, applied_ns FROM segments WHERE "group" = ?',
        (a.group,))}
    db.close()
    polls = []
    if a.polls and os.path.exists(a.polls):
        with open(a.polls) as f:
            for line in f:
                try:
                    p = json.loads(line)
                except ValueError:
                    continue
                polls.append((p["t_done"], p["lsn"]))
    polls.sort()
    # applied_lsn never decreases; make it so for bisect anyway.
    plsn, pt, m = [], [], 0
    for t, lsn in polls:
        m = max(m, lsn)
        plsn.append(m)
        pt.append(t)
    by_state, by_poll, missing = [], [], 0
    first_w, last_w = None, None
    for f in seg_files(a.segments):
        head, recs = dump(a.aimctl, f)
        n = int(head["number"])
        if n not in applied:
            missing += sum(1 for r in recs if r[1] == "WRITE")
            continue
        t_app = applied[n][2]
        for lsn, typ, _, t in recs:
            if typ != "WRITE":
                continue
            first_w = t if first_w is None else min(first_w, t)
            last_w = t if last_w is None else max(last_w, t)
            by_state.append((t_app - t) / 1e9)
            i = bisect.bisect_left(plsn, lsn)
            if i < len(plsn):
                by_poll.append((pt[i] - t) / 1e9)
    intervals = [(pt[i + 1] - pt[i]) / 1e9 for i in range(len(pt) - 1)]
    # Where a segment's time goes (source catalog): filling (first record ->
    # sealed), shipping (sealed -> acknowledged by the receiver), applying
    # (acknowledged -> recorded applied by aim-remote).
    stages = None
    if a.catalog and os.path.exists(a.catalog):
        cat = sqlite3.connect(f"file:{a.catalog}?mode=ro", uri=True)
        fill, ship, app = [], [], []
        for n, created, sealed, acked in cat.execute(
                "SELECT s.number, s.created_ns, s.sealed_ns, min(sh.acked_ns) FROM segments s"
                " JOIN shipments sh ON sh.segment = s.number GROUP BY s.number"):
            if n in applied and acked:
                fill.append((sealed - created) / 1e9)
                ship.append((acked - sealed) / 1e9)
                app.append((applied[n][2] - acked) / 1e9)
        cat.close()
        stages = {"fill": dist(fill), "ship": dist(ship), "apply": dist(app)}
    res = {"state": dist(by_state), "poll": dist(by_poll), "writes_not_applied": missing,
           "segments_applied": len(applied),
           "poll_interval": dist(intervals) if intervals else {"count": 0},
           "write_span_seconds": ((last_w - first_w) / 1e9) if first_w else 0,
           "segment_stages": stages}
    json.dump(res, sys.stdout)
    print()


# ------------------------------------------------------------------ resync

def cmd_wait_sync(a):
    """Polls aimfs's /status every --interval s (a fresh connection each
    time, as curl would) from before the mount until the source says
    "in_sync": true with destination --dest in sync, then waits (state DB, no
    network) until aim-remote applied the head LSN of that answer.  One JSON
    line per answer in --out: the poll time, in_sync, the destination's state,
    acked LSN, bytes shipped and its "sync" object (the progress)."""
    deadline = time.monotonic() + a.timeout
    first_answer = None
    last_sync, phases, polls, head, group = None, [], 0, None, None
    t_in_sync = None
    with open(a.out, "w") as out:
        while True:
            t = time.time_ns()
            st = None
            try:
                st = http_json(f"http://{a.status}/status", timeout=2)
            except (OSError, ValueError):
                pass
            t_done = time.time_ns()
            if st is not None:
                polls += 1
                first_answer = first_answer or t_done
                d = next((x for x in st.get("destinations", []) if x.get("name") == a.dest), {})
                sync = d.get("sync") or {}
                out.write(json.dumps({"t": t, "t_done": t_done, "in_sync": st.get("in_sync"),
                                      "head_lsn": st.get("head_lsn"), "state": d.get("state"),
                                      "acked_lsn": d.get("acked_lsn"),
                                      "bytes_shipped": d.get("bytes_shipped"),
                                      "sync": sync}) + "\n")
                ph = f"{sync.get('state', '?')}/{sync.get('phase', '')}".rstrip("/")
                if not phases or phases[-1]["phase"] != ph:
                    phases.append({"phase": ph, "first_ns": t_done})
                if sync.get("state") not in (None, "in_sync"):
                    last_sync = sync
                if (st.get("in_sync") is True and d.get("state") == "in_sync"
                        and sync.get("state") == "in_sync"):
                    t_in_sync, head, group = t_done, st["head_lsn"], st["group"]
                    break
            for pid in (a.pid or []):
                if not os.path.exists(f"/proc/{pid}"):
                    die(f"PID {pid} is gone while waiting for the sync")
            if time.monotonic() > deadline:
                die(f"timed out after {a.timeout}s waiting for the destination to be in sync; "
                    f"last sync object {last_sync}")
            time.sleep(max(0.0, a.interval - (time.time_ns() - t) / 1e9))
    poll_ns, row = wait_applied(a.state_db, group, head, a.timeout, 0.005,
                                a.pid[-1] if a.pid else None)
    applied_ns = row[3]
    end = max(t_in_sync, applied_ns)
    for i, p in enumerate(phases):
        nxt = phases[i + 1]["first_ns"] if i + 1 < len(phases) else t_in_sync
        p["seconds"] = (nxt - p["first_ns"]) / 1e9
    res = {"t0_ns": a.t0, "first_answer_ns": first_answer, "in_sync_ns": t_in_sync,
           "applied_ns": applied_ns, "end_ns": end, "seconds": (end - a.t0) / 1e9 if a.t0 else None,
           "in_sync_seconds": (t_in_sync - a.t0) / 1e9 if a.t0 else None,
           "applied_after_in_sync": (applied_ns - t_in_sync) / 1e9,
           "head_lsn": head, "group": group, "applied_lsn": row[0], "polls": polls,
           "phases": phases, "last_sync": last_sync}
    json.dump(res, sys.stdout)
    print()


def extents_layout(size, total, lo, hi, align, rng):
    """Non-overlapping extents (offset, length), all multiples of align, of
    lengths in [lo, hi], adding up to total bytes, scattered over [0, size):
    the holes between them are random cut points of the free space."""
    units, free = [], (size - total) // align
    left = total // align
    while left > 0:
        n = min(left, rng.randint(lo // align, hi // align))
        units.append(n)
        left -= n
    rng.shuffle(units)
    cuts = sorted(rng.randint(0, free) for _ in units)
    ext, pos, prev = [], 0, 0
    for n, c in zip(units, cuts):
        pos += c - prev
        prev = c
        ext.append((pos * align, n * align))
        pos += n
    return ext


def cmd_layout(a):
    """Writes random bytes (os.urandom, the same bytes to every FILE) into the
    extents of a seeded layout; fsyncs.  With --create the files are made
    (sparse, --size).  Prints a JSON summary."""
    import random
    rng = random.Random(a.seed)
    size, align = a.size, a.align
    total = int(size * a.pct / 100) // align * align if a.bytes is None else a.bytes
    ext = extents_layout(size, total, a.min, a.max, align, rng)
    fds = []
    for f in a.files:
        fd = os.open(f, os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if a.create else 0), 0o644)
        if a.create:
            os.ftruncate(fd, size)
        elif os.fstat(fd).st_size != size:
            die(f"{f} is not {size} bytes")
        fds.append(fd)
    for off, ln in ext:
        done = 0
        while done < ln:
            n = min(ln - done, 4 << 20)
            buf = os.urandom(n)
            for fd in fds:
                if os.pwrite(fd, buf, off + done) != n:
                    die("short write")
            done += n
    for fd in fds:
        os.fsync(fd)
        os.close(fd)
    # What the files hold as data (SEEK_DATA/SEEK_HOLE, as aimfs sees them).
    alloc = 0
    fd = os.open(a.files[0], os.O_RDONLY)
    pos = 0
    while pos < size:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        alloc += h - d
        pos = h
    os.close(fd)
    lens = sorted(x[1] for x in ext)
    json.dump({"extents": len(ext), "bytes": sum(lens), "size": size, "align": align,
               "min_extent": lens[0] if lens else 0, "max_extent": lens[-1] if lens else 0,
               "median_extent": statistics.median(lens) if lens else 0,
               "data_bytes_seek": alloc, "seed": a.seed,
               "layout": [[o, n] for o, n in ext] if a.list else None}, sys.stdout)
    print()


# ------------------------------------------------------------------ fio, records

def cmd_fio(a):
    with open(a.file) as f:
        j = json.load(f)
    w = {"bytes": 0, "ios": 0, "runtime_ms": 0}
    for job in j["jobs"]:
        w["bytes"] += job["write"]["io_bytes"]
        w["ios"] += job["write"]["total_ios"]
        w["runtime_ms"] = max(w["runtime_ms"], job["write"]["runtime"])
    w["seconds"] = w["runtime_ms"] / 1000.0
    json.dump(w, sys.stdout)
    print()


def cmd_record(a):
    rec = {}
    for kv in a.kv:
        k, _, v = kv.partition("=")
        try:
            rec[k] = int(v)
        except ValueError:
            try:
                rec[k] = float(v)
            except ValueError:
                rec[k] = v
    with open(a.file, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ------------------------------------------------------------------ report

def load_runs(raw):
    runs = []
    p = os.path.join(raw, "runs.jsonl")
    if os.path.exists(p):
        with open(p) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    return runs


def load_meta(raw):
    meta = []
    p = os.path.join(raw, "meta.tsv")
    if os.path.exists(p):
        with open(p) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("\t")
                meta.append((k, v))
    return meta


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, unit):
    if v is None:
        return "–"
    if unit == "B":
        return f"{v / 1e6:.2f} MB"
    if unit in ("MB/s",):
        return f"{v:.0f} MB/s" if v >= 100 else f"{v:.1f} MB/s"
    if unit == "IOPS":
        return f"{v:.0f} IOPS"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
    return f"{v:g}"


# Rows of the summary: (metric label, test, value key, unit, aimfs side, baseline
# side, target kind, target value, note). target kinds:
#   ratio_ge: aimfs/baseline >= v (higher is better)
#   ratio_le: aimfs/baseline <= v (lower is better)
#   abs_le:   aimfs <= v (no baseline)
#   bytes_le: aimfs <= v x the bytes changed (key "changed" in the runs; an
#             optional 9th element names that reference, default "changed")
SPECS = {
    "remote": [
        ("apply, file, sequential 1 MiB", "apply-file-seq", "mbps", "MB/s", "aim-remote", "fio", "ratio_ge", 0.8),
        ("apply, file, random 4 KiB", "apply-file-rand", "iops", "IOPS", "aim-remote", "fio", "ratio_ge", 0.7),
        ("apply, loop device, sequential 1 MiB", "apply-loop-seq", "mbps", "MB/s", "aim-remote", "fio", "ratio_ge", 0.8),
        ("apply, loop device, random 4 KiB", "apply-loop-rand", "iops", "IOPS", "aim-remote", "fio", "ratio_ge", 0.7),
        ("(info) apply, file, seq, vs fio with the applier's fsync count", "apply-file-seq", "mbps", "MB/s", "aim-remote", "fio-matched", "ratio_info", None),
        ("(info) apply, file, rand, vs fio with the applier's fsync count", "apply-file-rand", "iops", "IOPS", "aim-remote", "fio-matched", "ratio_info", None),
        ("(info) apply, loop, seq, vs fio with the applier's fsync count", "apply-loop-seq", "mbps", "MB/s", "aim-remote", "fio-matched", "ratio_info", None),
        ("(info) apply, loop, rand, vs fio with the applier's fsync count", "apply-loop-rand", "iops", "IOPS", "aim-remote", "fio-matched", "ratio_info", None),
        ("receive, HTTPS PUT (curl -T)", "receive", "mbps", "MB/s", "aim-remote", "nginx", "ratio_ge", 0.8),
    ],
    "mirror": [
        ("shipping throughput", "ship", "mbps", "MB/s", "aimctl-ship", "curl", "ratio_ge", 0.9),
        ("recovery point p50 (per write)", "rpo", "p50", "s", "aimfs", None, "info", None),
        ("recovery point p99 (per write)", "rpo", "p99", "s", "aimfs", None, "abs_le", 0.5),
        ("delta: time to converge", "delta", "seconds", "s", "aimfs", "rsync", "ratio_le", 0.2),
        ("delta: bytes on the wire", "delta", "wire_bytes", "B", "aimfs", "rsync", "bytes_le", 1.1),
    ],
    "resync": [
        ("initial sync: throughput (allocated bytes / time to in sync)", "initial", "mbps", "MB/s", "aimfs", "aimctl-ship", "ratio_ge", 0.8),
        ("(info) initial sync: time to in sync, vs shipping the same bytes", "initial", "seconds", "s", "aimfs", "aimctl-ship", "ratio_info", None),
        ("initial sync: bytes on the wire", "initial", "wire_bytes", "B", "aimfs", None, "bytes_le", 1.05, "allocated"),
        ("hash comparison: time to in sync", "compare", "seconds", "s", "aimfs", "rsync", "ratio_le", 0.25),
        ("hash comparison: bytes on the wire", "compare", "wire_bytes", "B", "aimfs", "rsync", "bytes_le", 1.1, "(differing + hashes)"),
    ],
}


def summarize(kind, runs):
    rows = []
    for label, test, key, unit, aside, bside, tkind, tval, *ref in SPECS[kind]:
        ref = ref[0] if ref else "changed"
        A = [r.get(key) for r in runs if r.get("test") == test and r.get("side") == aside]
        B = [r.get(key) for r in runs if r.get("test") == test and r.get("side") == bside] if bside else []
        if not A or (bside and not B):
            continue
        a, b = med(A), med(B)
        row = {"metric": label, "test": test, "key": key, "unit": unit, "aimfs_side": aside,
               "baseline_side": bside, "aimfs": a, "baseline": b, "aimfs_runs": A,
               "baseline_runs": B, "ratio": None, "target": None, "met": None, "ref": ref}
        # Per-round ratios (same round, so the same state of the machine).
        rr = []
        for rnd in sorted({r.get("round") for r in runs if r.get("test") == test}):
            ra = [r.get(key) for r in runs if r.get("test") == test and r.get("side") == aside and r.get("round") == rnd]
            rb = [r.get(key) for r in runs if r.get("test") == test and r.get("side") == bside and r.get("round") == rnd]
            if ra and rb and ra[0] is not None and rb[0]:
                rr.append(ra[0] / rb[0])
        row["round_ratios"] = rr
        # How many rounds met the target on their own.
        per = []
        if tkind == "ratio_ge":
            per = [x >= tval for x in rr]
        elif tkind == "ratio_le":
            per = [x <= tval for x in rr]
        elif tkind == "abs_le":
            per = [x <= tval for x in A if x is not None]
        elif tkind == "bytes_le":
            per = [r.get(key) <= tval * r.get("changed") for r in runs
                   if r.get("test") == test and r.get("side") == aside and r.get(key) is not None and r.get("changed")]
        row["rounds_met"] = f"{sum(per)}/{len(per)}" if per else None
        if tkind in ("ratio_ge", "ratio_le") and a is not None and b:
            row["ratio"] = a / b
            row["target"] = f"{'≥' if tkind == 'ratio_ge' else '≤'} {tval}"
            row["met"] = row["ratio"] >= tval if tkind == "ratio_ge" else row["ratio"] <= tval
        elif tkind == "abs_le" and a is not None:
            row["target"] = f"≤ {tval:g} {unit}"
            row["met"] = a <= tval
        elif tkind == "bytes_le" and a is not None:
            ch = med([r.get("changed") for r in runs if r.get("test") == test and r.get("side") == aside])
            row["changed"] = ch
            if b:
                row["ratio"] = a / b
            row["vs_changed"] = a / ch if ch else None
            row["target"] = f"≤ {tval} × {ref} ({fmt(ch * tval, 'B') if ch else '?'})"
            row["met"] = row["vs_changed"] is not None and row["vs_changed"] <= tval
        elif tkind == "ratio_info" and a is not None and b:
            row["ratio"] = a / b
            row["target"] = "–"
        elif tkind == "info":
            row["target"] = "–"
        rows.append(row)
    return rows


def cmd_report(a):
    runs = load_runs(a.raw)
    meta = load_meta(a.raw)
    rows = summarize(a.kind, runs)
    title = {"remote": "aim-remote: apply and receive throughput",
             "mirror": "aimfs mirror: shipping, recovery point, delta",
             "resync": "aimfs resynchronisation: initial sync, hash comparison"}[a.kind]
    md = [f"# {title}{' (PARTIAL: the run stopped early)' if a.partial else ''}", ""]
    m = dict(meta)
    md.append(f"{m.get('date', '?')} on {m.get('host', '?')}: {m.get('nproc', '?')} CPUs, "
              f"{m.get('memory', '?')}, load average at start {m.get('loadavg_at_start', '?')}. "
              f"Medians over {m.get('rounds', '?')} round(s); ratio = median(aimfs) / median(baseline).")
    md.append("")
    md.append("| metric | aimfs | baseline | ratio | target | met? |")
    md.append("|---|---|---|---|---|---|")
    for r in rows:
        base = f"{fmt(r['baseline'], r['unit'])} ({r['baseline_side']})" if r["baseline_side"] else "–"
        if r.get("vs_changed") is not None:
            ratio = (f"{r['vs_changed']:.3f}× {r.get('ref', 'changed')}" +
                     (f"; {r['ratio']:.3f}× {r['baseline_side']}" if r["ratio"] else ""))
        else:
            ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "–"
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        if r.get("rounds_met") and r["met"] is not None:
            met += f" ({r['rounds_met']} rounds)"
        md.append(f"| {r['metric']} | {fmt(r['aimfs'], r['unit'])} ({r['aimfs_side']}) | {base} | "
                  f"{ratio} | {r['target'] or '–'} | {met} |")
    md.append("")
    # Spread and every run.
    md.append("## Every run")
    md.append("")
    keys = ["round", "seq", "test", "side", "mbps", "iops", "seconds", "bytes", "p50", "p99",
            "max", "fio_mbps", "fill_p50", "ship_p50", "apply_p50", "wire_bytes", "changed", "payload_bytes", "sync_after_seconds",
            "allocated", "differing", "hash_bytes", "saved_bytes", "ack_seconds",
            "startup_seconds", "hash_seconds", "compare_seconds", "copy_seconds", "note"]
    present = [k for k in keys if any(k in r for r in runs)]
    md.append("| " + " | ".join(present) + " |")
    md.append("|" + "---|" * len(present))
    for r in runs:
        cells = []
        for k in present:
            v = r.get(k, "")
            if isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(str(v))
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    spreads = []
    for r in rows:
        for side, xs in (("aimfs", r["aimfs_runs"]), ("baseline", r["baseline_runs"])):
            xs = [x for x in xs if x is not None]
            if len(xs) > 1 and med(xs):
                spreads.append(f"{r['metric']} ({side}): {(max(xs) - min(xs)) / med(xs) * 100:.0f}%")
        if r.get("round_ratios"):
            spreads.append(f"{r['metric']}: per-round ratios " +
                           ", ".join(f"{x:.2f}" for x in r["round_ratios"]))
    if spreads:
        md.append("Spread between rounds ((max − min) / median) and per-round ratios:")
        md.append("")
        md.extend(f"- {x}" for x in spreads)
        md.append("")
    md.append("## Machine and method")
    md.append("")
    for k, v in meta:
        if k == "command":
            continue
        md.append(f"- **{k}**: {v}")
    md.append("")
    md.append("Reproduce with:")
    md.append("")
    md.append("```")
    md.append(m.get("command", "?"))
    md.append("```")
    md.append("")
    md.append(f"Raw data: `{os.path.basename(a.raw)}/` (fio JSON, daemon logs, runs.jsonl, meta.tsv).")
    with open(a.md, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(a.json, "w") as f:
        json.dump({"kind": a.kind, "partial": a.partial, "summary": rows, "runs": runs,
                   "meta": dict(meta)}, f, indent=1)
        f.write("\n")
    print("\n".join(md[:6 + len(rows) + 2]))


def main():
    p = argparse.ArgumentParser(prog="aimbench.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("segstats")
    s.add_argument("--aimctl", required=True)
    s.add_argument("dir")
    s.set_defaults(fn=cmd_segstats)
    for name, fn in (("apply-run", cmd_apply_run), ("wait-applied", cmd_wait_applied)):
        s = sub.add_parser(name)
        s.add_argument("--state-db", required=True)
        s.add_argument("--group", required=True)
        s.add_argument("--lsn", type=int, required=True)
        s.add_argument("--timeout", type=float, default=600)
        s.add_argument("--interval", type=float, default=0.005)
        s.add_argument("--pid", type=int)
        if name == "apply-run":
            s.add_argument("--stage", required=True)
            s.add_argument("--dest", required=True)
            s.add_argument("--status")
        s.set_defaults(fn=fn)
    s = sub.add_parser("poll")
    s.add_argument("--status", required=True)
    s.add_argument("--group", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--interval", type=float, default=0.05)
    s.set_defaults(fn=cmd_poll)
    s = sub.add_parser("rpo")
    s.add_argument("--aimctl", required=True)
    s.add_argument("--segments", required=True)
    s.add_argument("--state-db", required=True)
    s.add_argument("--group", required=True)
    s.add_argument("--polls")
    s.add_argument("--catalog")
    s.set_defaults(fn=cmd_rpo)
    s = sub.add_parser("wait-sync")
    s.add_argument("--status", required=True)
    s.add_argument("--dest", required=True)
    s.add_argument("--state-db", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--t0", type=int, default=0)
    s.add_argument("--interval", type=float, default=0.1)
    s.add_argument("--timeout", type=float, default=1800)
    s.add_argument("--pid", type=int, action="append", help="abort if gone (last: aim-remote)")
    s.set_defaults(fn=cmd_wait_sync)
    s = sub.add_parser("layout")
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--pct", type=float, default=1)
    s.add_argument("--bytes", type=int)
    s.add_argument("--min", type=int, required=True)
    s.add_argument("--max", type=int, required=True)
    s.add_argument("--align", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--create", action="store_true")
    s.add_argument("--list", action="store_true")
    s.add_argument("files", nargs="+")
    s.set_defaults(fn=cmd_layout)
    s = sub.add_parser("fio")
    s.add_argument("file")
    s.set_defaults(fn=cmd_fio)
    s = sub.add_parser("record")
    s.add_argument("file")
    s.add_argument("kv", nargs="*")
    s.set_defaults(fn=cmd_record)
    s = sub.add_parser("report")
    s.add_argument("--kind", choices=sorted(SPECS), required=True)
    s.add_argument("--raw", required=True)
    s.add_argument("--md", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--partial", action="store_true")
    s.set_defaults(fn=cmd_report)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
