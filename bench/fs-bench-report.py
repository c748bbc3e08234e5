#!/usr/bin/python3
"""Helper of bench/fs-bench.sh: reads fio's JSON output, computes medians and
ratios, writes the markdown report and the JSON file with every number.

  fs-bench-report.py metric FIO_JSON
      one line for the progress log, e.g. "1234.5 MB/s" or "23456 IOPS"
  fs-bench-report.py report --raw RAW_DIR --md OUT.md --json OUT.json [--partial]
      RAW_DIR holds meta.tsv, runs.tsv and the fio JSON files; prints the markdown

Standard library only.
"""

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

TARGET_ORDER = ["direct", "aimfs", "aimfs-base", "bindfs", "bindfs-odirect"]
FUSE_TARGETS = ["aimfs", "aimfs-base", "bindfs", "bindfs-odirect"]

MODE_TEXT = {
    "odirect-psync": "O_DIRECT, psync (QD1)",
    "odirect-aio16": "O_DIRECT, libaio QD16",
    "buffered": "buffered, psync (writes end with fsync)",
}
PATTERN_TEXT = {
    "seq-write-1M": "sequential write, 1 MiB",
    "rand-write-4k": "random write, 4 KiB, 1 job",
    "rand-write-4k-2j": "random write, 4 KiB, 2 jobs (a file each)",
    "seq-read-1M": "sequential read, 1 MiB",
    "rand-read-4k": "random read, 4 KiB",
}


def load_fio(path):
    """Return the metrics of the (group-reported) job in a fio JSON file."""
    text = Path(path).read_text(errors="replace")
    start = text.find("{")
    if start < 0:
        raise ValueError(f"{path}: no JSON object in fio output")
    data, _ = json.JSONDecoder().raw_decode(text[start:])
    jobs = data.get("jobs") or []
    if not jobs:
        raise ValueError(f"{path}: fio reported no jobs")
    job = jobs[0]
    rw = job.get("job options", {}).get("rw", "")
    if not rw:
        rw = data.get("global options", {}).get("rw", "")
    direction = "write" if "write" in rw else "read"
    d = job[direction]
    sequential = not rw.startswith("rand")
    clat = d.get("clat_ns", {})
    pct = clat.get("percentile", {}) or {}
    p99 = pct.get("99.000000")
    return {
        "rw": rw,
        "direction": direction,
        "sequential": sequential,
        "unit": "MB/s" if sequential else "IOPS",
        "value": d["bw_bytes"] / 1e6 if sequential else d["iops"],
        "bw_MBps": d["bw_bytes"] / 1e6,
        "iops": d["iops"],
        "io_bytes": d["io_bytes"],
        "runtime_ms": d["runtime"],
        "lat_mean_us": d.get("lat_ns", {}).get("mean", 0) / 1e3,
        "clat_p99_us": p99 / 1e3 if p99 is not None else None,
        "fio_error": job.get("error", 0),
        "fio_version": data.get("fio version"),
    }


def fmt_value(v, unit):
    if v is None:
        return "–"
    if unit == "IOPS":
        return f"{v:,.0f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


def cmd_metric(args):
    m = load_fio(args.fio_json)
    extra = f", lat {m['lat_mean_us']:.0f} µs"
    if m["clat_p99_us"] is not None:
        extra += f", p99 {m['clat_p99_us']:.0f} µs"
    print(f"{fmt_value(m['value'], m['unit'])} {m['unit']}{extra}")


def read_meta(raw):
    meta = {}
    with open(raw / "meta.tsv", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if "\t" in line:
                k, v = line.split("\t", 1)
                meta[k] = v
    return meta


def opt_int(s):
    return None if s in ("", "-", None) else int(s)


def cmd_report(args):
    raw = Path(args.raw)
    meta = read_meta(raw)
    targets = sorted(meta.get("targets", "").split(),
                     key=lambda t: TARGET_ORDER.index(t) if t in TARGET_ORDER else 99)
    jobs = meta.get("jobs", "").split()
    rounds_planned = int(meta.get("rounds", "1"))

    runs = []
    with open(raw / "runs.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            m = load_fio(raw / row["fio_json"])
            runs.append({
                "round": int(row["round"]),
                "seq": int(row["seq"]),
                "job": row["job"],
                "target": row["target"],
                "fio_json": row["fio_json"],
                **m,
                "vmhwm_kb": opt_int(row["vmhwm_kb"]),
                "daemon_rc": opt_int(row["daemon_rc"]),
                "journal_seg_bytes": opt_int(row["journal_seg_bytes"]),
                "journal_dir_bytes": opt_int(row["journal_dir_bytes"]),
                "journal_files": opt_int(row["journal_files"]),
            })

    # Per round, each run's ratio to direct (same job, same round).
    by_key = {(r["round"], r["job"], r["target"]): r for r in runs}
    for r in runs:
        d = by_key.get((r["round"], r["job"], "direct"))
        r["ratio_to_direct"] = (r["value"] / d["value"]) if d and d["value"] else None

    results = {}
    for job in jobs:
        results[job] = {}
        for t in targets:
            rs = [r for r in runs if r["job"] == job and r["target"] == t]
            if not rs:
                continue
            vals = [r["value"] for r in rs]
            med = statistics.median(vals)
            cell = {
                "unit": rs[0]["unit"],
                "median": med,
                "rounds": vals,
                "min": min(vals),
                "max": max(vals),
                "spread_pct": (max(vals) - min(vals)) / med * 100 if med else None,
                "lat_mean_us_median": statistics.median(r["lat_mean_us"] for r in rs),
                "fio_write_bytes_median": statistics.median(r["io_bytes"] for r in rs)
                if rs[0]["direction"] == "write" else None,
            }
            hw = [r["vmhwm_kb"] for r in rs if r["vmhwm_kb"] is not None]
            if hw:
                cell["vmhwm_kb_max"] = max(hw)
                cell["vmhwm_kb_median"] = statistics.median(hw)
            js = [r["journal_seg_bytes"] for r in rs if r["journal_seg_bytes"] is not None]
            if js:
                cell["journal_seg_bytes_median"] = statistics.median(js)
                cell["journal_dir_bytes_median"] = statistics.median(
                    r["journal_dir_bytes"] for r in rs if r["journal_dir_bytes"] is not None)
                cell["journal_files_median"] = statistics.median(
                    r["journal_files"] for r in rs if r["journal_files"] is not None)
            results[job][t] = cell
        d = results[job].get("direct")
        for t, cell in results[job].items():
            cell["ratio_to_direct"] = (cell["median"] / d["median"]) if d and d["median"] else None
        # aimfs against another build of itself: the median of each round's
        # ratio (the two ran back to back, so the pair shares the machine's mood)
        if "aimfs" in results[job] and "aimfs-base" in results[job]:
            pairs = [by_key[(k, job, "aimfs")]["value"] / by_key[(k, job, "aimfs-base")]["value"]
                     for k in sorted({r["round"] for r in runs})
                     if (k, job, "aimfs") in by_key and (k, job, "aimfs-base") in by_key
                     and by_key[(k, job, "aimfs-base")]["value"]]
            if pairs:
                results[job]["aimfs"]["ratio_to_base"] = statistics.median(pairs)
                results[job]["aimfs"]["ratio_to_base_rounds"] = pairs

    rounds_done = max((r["round"] for r in runs), default=0)
    warnings = []
    for r in runs:
        if r["daemon_rc"] not in (None, 0):
            warnings.append(f"{r['target']} exited with status {r['daemon_rc']} after unmount "
                            f"(job {r['job']}, round {r['round']}); see logs/{r['target']}.log")
        if r["fio_error"]:
            warnings.append(f"fio reported error {r['fio_error']} for {r['job']} on {r['target']}, "
                            f"round {r['round']}")

    md = render_md(meta, targets, jobs, results, runs, warnings, rounds_done, rounds_planned,
                   args.partial, raw, Path(args.json))
    Path(args.md).write_text(md, encoding="utf-8")
    Path(args.json).write_text(json.dumps({
        "partial": args.partial,
        "meta": meta,
        "results": results,
        "runs": runs,
        "warnings": warnings,
    }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(md)


def render_md(meta, targets, jobs, results, runs, warnings, rounds_done, rounds_planned,
              partial, raw, json_path):
    L = []
    title = "aimfs fio benchmark"
    if partial:
        title += " — PARTIAL (the run stopped early)"
    L.append(f"# {title}\n")
    L.append(f"{meta.get('date', '')}, {rounds_done} of {rounds_planned} round(s), "
             f"{meta.get('runtime')} s per job (+{meta.get('ramp')} s ramp), "
             f"{meta.get('size')} per file.\n")
    L.append("Reproduce:\n")
    L.append("```\n" + meta.get("command", "") + "\n```\n")

    L.append("## Results\n")
    L.append("Median over the rounds; sequential jobs in MB/s (10^6 bytes/s), random jobs in IOPS. "
             "In brackets: the ratio to `direct` (median of the target / median of direct, same run). "
             "Higher is better.\n")
    base = "aimfs" in targets and "aimfs-base" in targets
    heads = ["job", "unit"] + targets + (["aimfs / aimfs-base"] if base else [])
    L.append("| " + " | ".join(heads) + " |")
    L.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(heads) - 2)) + "|")
    dagger = False
    for job in jobs:
        cells = results.get(job, {})
        if not cells:
            continue
        unit = next(iter(cells.values()))["unit"]
        row = [f"`{job}`", unit]
        for t in targets:
            c = cells.get(t)
            if not c:
                row.append("–")
                continue
            s = fmt_value(c["median"], unit)
            if t != "direct" and c["ratio_to_direct"] is not None:
                s += f" ({fmt_ratio(c['ratio_to_direct'])})"
            if t == "bindfs" and job.startswith("odirect"):
                s += " †"
                dagger = True
            row.append(s)
        if base:
            r = cells.get("aimfs", {}).get("ratio_to_base")
            row.append("–" if r is None else
                       f"{r:.3f} (" + ", ".join(f"{x:.2f}" for x in
                                                cells["aimfs"]["ratio_to_base_rounds"]) + ")")
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    if base:
        L.append("aimfs / aimfs-base: median over the rounds of each round's ratio (the two ran "
                 "one after the other in every round), and each round's ratio in brackets.\n")
    if dagger:
        L.append("† bindfs without `--forward-odirect` clears O_DIRECT when it opens the backing "
                 "file: these numbers come from the page cache, not from the disk.\n")
    L.append("Jobs: " + "; ".join(f"`{m}` = {t}" for m, t in MODE_TEXT.items()) + ". "
             + "; ".join(f"`{p}` = {t}" for p, t in PATTERN_TEXT.items()) + ".\n")

    if rounds_done > 1:
        L.append("### Spread between rounds\n")
        L.append("(max − min) / median of each cell, in percent. Large values mean the medians above "
                 "are less trustworthy (buffered writes are the usual suspect).\n")
        L.append("| job | " + " | ".join(targets) + " |")
        L.append("|---|" + "|".join(["---:"] * len(targets)) + "|")
        for job in jobs:
            cells = results.get(job, {})
            if not cells:
                continue
            row = [f"`{job}`"]
            for t in targets:
                c = cells.get(t)
                row.append("–" if not c or c["spread_pct"] is None else f"{c['spread_pct']:.0f} %")
            L.append("| " + " | ".join(row) + " |")
        L.append("")

    fuse = [t for t in targets if t in FUSE_TARGETS]
    if fuse:
        L.append("## FUSE daemons: peak memory and journal\n")
        L.append("Peak resident memory = VmHWM of the daemon's process, read just before the unmount "
                 "(max over the rounds; each job is a fresh mount).")
        if "aimfs" in targets:
            L.append("Journal = bytes of the segment files (`*.aimj`) in the journal directory after "
                     "the unmount (median over the rounds; the segments are deleted after each job). "
                     "It includes the ramp-time writes, which fio does not count, so for writes "
                     "journal/written ≈ (runtime + ramp) / runtime plus the format's overhead.")
        L.append("")
        heads = ["job"] + [f"{t} VmHWM MiB" for t in fuse]
        if "aimfs" in targets:
            heads += ["journal MB", "segments", "fio wrote MB", "journal / written", "journal dir MB"]
        L.append("| " + " | ".join(heads) + " |")
        L.append("|---|" + "|".join(["---:"] * (len(heads) - 1)) + "|")
        for job in jobs:
            cells = results.get(job, {})
            if not cells:
                continue
            row = [f"`{job}`"]
            for t in fuse:
                c = cells.get(t, {})
                row.append(f"{c['vmhwm_kb_max'] / 1024:.0f}" if "vmhwm_kb_max" in c else "–")
            if "aimfs" in targets:
                c = cells.get("aimfs", {})
                if "journal_seg_bytes_median" in c:
                    jb = c["journal_seg_bytes_median"]
                    wb = c.get("fio_write_bytes_median")
                    row += [f"{jb / 1e6:,.0f}", f"{c['journal_files_median']:.0f}",
                            f"{wb / 1e6:,.0f}" if wb is not None else "–",
                            f"{jb / wb:.2f}" if wb else "–",
                            f"{c['journal_dir_bytes_median'] / 1e6:,.1f}"]
                else:
                    row += ["–"] * 5
            L.append("| " + " | ".join(row) + " |")
        L.append("")

    if warnings:
        L.append("## Warnings\n")
        for w in warnings:
            L.append(f"- {w}")
        L.append("")

    L.append("## Machine\n")
    for key, label in [("host", "host"), ("virt", "virtualisation"), ("nproc", "nproc"),
                       ("cpu", "CPU"), ("memory", "memory"), ("kernel", "kernel"),
                       ("fs", "scratch filesystem (type, source, options)"),
                       ("scratch", "scratch directory"), ("dirty", "writeback"),
                       ("fio", "fio"), ("bindfs", "bindfs"), ("aimfs", "aimfs binary"),
                       ("aimfs_git", "aimfs source (git describe)"),
                       ("aimfs_binary", "aimfs binary file"), ("aimfs_opts", "aimfs -o options"),
                       ("aimfs_base", "aimfs-base binary"),
                       ("aimfs_base_binary", "aimfs-base binary file"),
                       ("journal", "aimfs journal directory")]:
        if key in meta:
            L.append(f"- {label}: `{meta[key]}`")
    L.append("")
    L.append("fio arguments per job (plus `--name=fsbench --directory=<target dir> "
             "--filename_format='$jobname.$jobnum.$filenum' --output-format=json`, run from the "
             "target directory):\n")
    L.append("```")
    for job in jobs:
        if f"fio:{job}" in meta:
            L.append(f"{job:30s} {meta['fio:' + job]}")
    L.append("```\n")

    L.append("## Raw runs\n")
    L.append(f"In run order. All numbers also in `{json_path.name}`; fio's JSON and the daemons' "
             f"logs in `{raw.name}/`. Ratio = this run / direct in the same round.\n")
    L.append("| round | # | job | target | value | unit | ratio | lat mean µs | clat p99 µs "
             "| VmHWM MiB | journal MB | daemon exit |")
    L.append("|---:|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in sorted(runs, key=lambda r: r["seq"]):
        L.append("| " + " | ".join([
            str(r["round"]), str(r["seq"]), f"`{r['job']}`", r["target"],
            fmt_value(r["value"], r["unit"]), r["unit"],
            fmt_ratio(r["ratio_to_direct"]) if r["target"] != "direct" else "",
            f"{r['lat_mean_us']:.0f}",
            f"{r['clat_p99_us']:.0f}" if r["clat_p99_us"] is not None else "–",
            f"{r['vmhwm_kb'] / 1024:.0f}" if r["vmhwm_kb"] is not None else "",
            f"{r['journal_seg_bytes'] / 1e6:,.0f}" if r["journal_seg_bytes"] is not None else "",
            str(r["daemon_rc"]) if r["daemon_rc"] is not None else "",
        ]) + " |")
    L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("metric")
    p.add_argument("fio_json")
    p.set_defaults(func=cmd_metric)
    p = sub.add_parser("report")
    p.add_argument("--raw", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--partial", action="store_true")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args()
    try:
        args.func(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"fs-bench-report: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
