#!/usr/bin/python3
"""s3bench.py - helper of bench/s3-bench.sh (object-store destinations).

Subcommands (each prints JSON or writes files):

  bucket ENDPOINT NAME create|empty     make a bucket, or delete every object in it
  head ENDPOINT BUCKET PREFIX           every group's HEAD under PREFIX, as JSON
  curl-args ENDPOINT BUCKET KEYPREFIX DIR  the curl --next command line that uploads
                                        DIR's segments (hashes taken first, timed)
  curl-get-args [--parallel N] ENDPOINT BUCKET KEYPREFIX DIR OUT   the curl command
                                        line that downloads every segment object
                                        under KEYPREFIX into DIR
  latency --catalog DB --state-db DB --group G   per segment: sealed -> acknowledged
                                        (the transport) and acknowledged -> applied
                                        (pull + apply), p50/p99/max
  wait-groups --status ADDR --expect JSON --timeout S   until every group of
                                        {group: lsn} is applied; seconds and bytes
  record FILE k=v ...                   append a run record (JSON lines)
  report --raw DIR --md FILE --json FILE   the markdown report

Only the Python standard library and tests/ceph_rgw.py's S3 client; nothing
here talks to anything but loopback addresses and local files.
"""
import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from ceph_rgw import S3  # noqa: E402


def s3(endpoint):
    return S3(endpoint, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def cmd_bucket(a):
    c = s3(a.endpoint)
    if a.action == "create":
        c.create_bucket(a.name)
    else:
        for k in c.list(a.name):
            c.delete(a.name, k)
    print("{}")


def cmd_head(a):
    c = s3(a.endpoint)
    out = {}
    for k in c.list(a.bucket, a.prefix + "/"):
        if k.endswith("/HEAD"):
            h = json.loads(c.get(a.bucket, k)[1])
            out[h["group"]] = h
    print(json.dumps(out))


def cmd_curl_args(a):
    """One curl process, one connection, in order: --next per segment, each
    with its own x-amz-content-sha256 (hashed here, before the timing)."""
    files = sorted(f for f in os.listdir(a.dir) if f.endswith(".aimj"))
    t0 = time.monotonic()
    args = []
    for i, f in enumerate(files):
        with open(os.path.join(a.dir, f), "rb") as fh:
            h = hashlib.sha256()
            while True:
                b = fh.read(1 << 20)
                if not b:
                    break
                h.update(b)
        if i:
            args.append("--next")
        args += ["-sS", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
                 f"{os.environ['AWS_ACCESS_KEY_ID']}:{os.environ['AWS_SECRET_ACCESS_KEY']}",
                 "-H", f"x-amz-content-sha256: {h.hexdigest()}", "-o", "/dev/null",
                 "-w", "%{http_code} %{size_upload}\\n",
                 "-T", os.path.join(a.dir, f), f"{a.endpoint}/{a.bucket}/{a.keyprefix}/{f}"]
    hash_s = time.monotonic() - t0
    with open(a.out, "w") as fh:
        fh.write("\0".join(args))
    print(json.dumps({"segments": len(files), "hash_seconds": hash_s}))


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def cmd_curl_get_args(a):
    """One curl process: every segment object under the key prefix into a
    file of DIR, --next per object; with --parallel N, N at a time."""
    keys = sorted(k for k in s3(a.endpoint).list(a.bucket, a.keyprefix + "/")
                  if k.endswith(".aimj"))
    args = (["--no-progress-meter", "--parallel", "--parallel-max", str(a.parallel)]
            if a.parallel > 1 else [])
    for i, k in enumerate(keys):
        if i:
            args.append("--next")
        args += ["-sS", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
                 f"{os.environ['AWS_ACCESS_KEY_ID']}:{os.environ['AWS_SECRET_ACCESS_KEY']}",
                 "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                 "-o", os.path.join(a.dir, k.rsplit("/", 1)[1]),
                 "-w", "%{http_code} %{size_download}\\n", f"{a.endpoint}/{a.bucket}/{k}"]
    with open(a.out, "w") as fh:
        fh.write("\0".join(args))
    print(json.dumps({"segments": len(keys)}))


def cmd_latency(a):
    src = sqlite3.connect(f"file:{a.catalog}?mode=ro", uri=True)
    dst = sqlite3.connect(f"file:{a.state_db}?mode=ro", uri=True)
    sealed = dict(src.execute("SELECT number, sealed_ns FROM segments"))
    acked = dict(src.execute("SELECT segment, acked_ns FROM shipments"))
    applied = dict(dst.execute('SELECT number, applied_ns FROM segments WHERE "group" = ?',
                               (a.group,)))
    ship, pull = [], []
    for n, t_ack in acked.items():
        if n in applied and n in sealed:
            ship.append((t_ack - sealed[n]) / 1e9)
            pull.append((applied[n] - t_ack) / 1e9)
    res = {"segments": len(pull)}
    for name, xs in (("ship", ship), ("pull", pull)):
        res[name] = {"p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs) if xs else None}
    print(json.dumps(res))


def status(addr):
    with urllib.request.urlopen(f"http://{addr}/status", timeout=5) as r:
        return json.loads(r.read())


def cmd_wait_groups(a):
    expect = json.loads(a.expect)
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    while True:
        st = status(a.status)
        groups = {g["group"]: g for g in st["groups"]}
        if all(g in groups and groups[g]["applied_lsn"] >= lsn for g, lsn in expect.items()):
            break
        if time.monotonic() > deadline:
            sys.exit(f"s3bench: not applied after {a.timeout} s: {json.dumps(st)[:2000]}")
        time.sleep(0.05)
    t = time.monotonic() - t0
    applied = sum(groups[g]["bytes_written"] for g in expect)
    print(json.dumps({"seconds": t, "bytes": applied, "groups": len(expect),
                      "mbps": applied / t / 1e6}))


def cmd_record(a):
    rec = {}
    for kv in a.kv:
        k, _, v = kv.partition("=")
        try:
            rec[k] = json.loads(v)
        except ValueError:
            rec[k] = v
    with open(a.file, "a") as f:
        f.write(json.dumps(rec) + "\n")


def cmd_report(a):
    runs = [json.loads(line) for line in open(os.path.join(a.raw, "runs.jsonl"))]
    meta = [line.rstrip("\n").split("\t", 1) for line in open(os.path.join(a.raw, "meta.tsv"))]

    def med(test, side, key):
        xs = [r[key] for r in runs if r["test"] == test and r["side"] == side and key in r]
        return statistics.median(xs) if xs else None

    rows, res = [], {}
    up_a, up_c = med("upload", "aimctl-ship", "mbps"), med("upload", "curl", "mbps")
    up_ch = med("upload", "curl+hash", "mbps")
    if up_a and up_c:
        res["upload"] = {"aimfs": up_a, "curl": up_c, "ratio": up_a / up_c,
                         "curl_with_hashing": up_ch}
        rows.append(f"| upload to RGW | {up_a:.0f} MB/s (`aimctl ship`) | {up_c:.0f} MB/s "
                    f"(curl --aws-sigv4, hashes taken beforehand) | {up_a / up_c:.2f} | ≥ 0.9 |")
        if up_ch:
            rows.append(f"| ... counting curl's hashing | | {up_ch:.0f} MB/s (sha256 + curl) | "
                        f"{up_a / up_ch:.2f} | |")
        cpu = med("upload", "aimctl-ship", "cpu_seconds")
        if cpu is not None:
            gib = med("upload", "aimctl-ship", "bytes") / 2**30
            res["upload"]["aimfs_cpu_seconds_per_gib"] = cpu / gib
            rows.append(f"| ... `aimctl ship`'s CPU (user + system) | {cpu / gib:.2f} s per GiB | "
                        f"| | |")
    lp99, l50 = med("latency", "pull", "pull_p99"), med("latency", "pull", "pull_p50")
    if lp99 is not None:
        s50, s99 = med("latency", "pull", "ship_p50"), med("latency", "pull", "ship_p99")
        res["latency"] = {"pull_p50": l50, "pull_p99": lp99, "ship_p50": s50, "ship_p99": s99}
        rows.append(f"| acknowledged → applied (pull, 1 s poll), p50 / p99 | {l50:.2f} s / "
                    f"{lp99:.2f} s | sealed → acknowledged (the transport's own): {s50:.2f} s / "
                    f"{s99:.2f} s | | p99 ≤ 2 s |")
    g20, g1 = med("apply", "20-groups", "mbps"), med("apply", "1-group", "mbps")
    if g20 and g1:
        res["apply"] = {"groups20": g20, "group1": g1, "ratio": g20 / g1}
        rows.append(f"| pull + apply, 20 groups, aggregate | {g20:.0f} MB/s | {g1:.0f} MB/s "
                    f"(one group, as many bytes) | {g20 / g1:.2f} | ≥ 0.8 |")
    bl = {side: med("backlog", side, "seconds")
          for side in ("aim-remote", "aimctl-restore", "curl-8", "curl-1")}
    if all(bl.values()):
        nseg = runs[[r["test"] for r in runs].index("backlog")]["segments"]
        res["backlog"] = dict(bl, segments=nseg)
        rows.append(f"| backlog of {nseg} 256 KiB segments: pulled and applied from nothing | "
                    f"{bl['aim-remote']:.1f} s ({nseg / bl['aim-remote']:.0f}/s, `aim-remote "
                    f"--pull`) | {bl['curl-8']:.1f} s (curl, GETs only, 8 at a time); "
                    f"{bl['curl-1']:.1f} s (one at a time) | {bl['curl-8'] / bl['aim-remote']:.2f} | |")
        rows.append(f"| ... the same restored to its last LSN | {bl['aimctl-restore']:.1f} s "
                    f"({nseg / bl['aimctl-restore']:.0f}/s, `aimctl restore`) | as above | "
                    f"{bl['curl-8'] / bl['aimctl-restore']:.2f} | |")
    md = ["# s3-bench", "", "| metric | aimfs | baseline | ratio | target |",
          "|---|---|---|---|---|"] + rows + ["", "## Runs", "", "```"]
    md += [json.dumps(r) for r in runs] + ["```", "", "## Setup", ""]
    md += [f"- **{k}**: {v}" for k, v in meta]
    with open(a.md, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(a.json, "w") as f:
        json.dump({"results": res, "runs": runs, "meta": dict(meta)}, f, indent=1)
    print("\n".join(md[:len(rows) + 4]))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(required=True)
    s = sub.add_parser("bucket")
    s.add_argument("endpoint")
    s.add_argument("name")
    s.add_argument("action", choices=("create", "empty"))
    s.set_defaults(fn=cmd_bucket)
    s = sub.add_parser("head")
    s.add_argument("endpoint")
    s.add_argument("bucket")
    s.add_argument("prefix")
    s.set_defaults(fn=cmd_head)
    s = sub.add_parser("curl-args")
    s.add_argument("endpoint")
    s.add_argument("bucket")
    s.add_argument("keyprefix")
    s.add_argument("dir")
    s.add_argument("out")
    s.set_defaults(fn=cmd_curl_args)
    s = sub.add_parser("curl-get-args")
    s.add_argument("--parallel", type=int, default=1)
    s.add_argument("endpoint")
    s.add_argument("bucket")
    s.add_argument("keyprefix")
    s.add_argument("dir")
    s.add_argument("out")
    s.set_defaults(fn=cmd_curl_get_args)
    s = sub.add_parser("latency")
    s.add_argument("--catalog", required=True)
    s.add_argument("--state-db", required=True)
    s.add_argument("--group", required=True)
    s.set_defaults(fn=cmd_latency)
    s = sub.add_parser("wait-groups")
    s.add_argument("--status", required=True)
    s.add_argument("--expect", required=True)
    s.add_argument("--timeout", type=float, default=900)
    s.set_defaults(fn=cmd_wait_groups)
    s = sub.add_parser("record")
    s.add_argument("file")
    s.add_argument("kv", nargs="*")
    s.set_defaults(fn=cmd_record)
    s = sub.add_parser("report")
    s.add_argument("--raw", required=True)
    s.add_argument("--md", required=True)
    s.add_argument("--json", required=True)
    s.set_defaults(fn=cmd_report)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
