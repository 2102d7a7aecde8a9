#!/usr/bin/env python3
"""Median tables from bench/run.sh raw results (lines 'workload=.. impl=.. k=v ...').

The W1/W2/W4 tables have the same columns as the peers' summarize.py, so fluxus rows can be set
beside theirs; the extra measurements (slowsink, latency, lifecycle) get tables of their own.
Lines starting with '#' (comments, failed runs) are ignored. Python 3 standard library only.
"""
import statistics
import sys
from collections import OrderedDict


def parse(line):
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def num(x):
    try:
        return float(x)
    except ValueError:
        return None


def med(ds, k):
    v = [num(d[k]) for d in ds if k in d]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def fmt(x, nd=3):
    if x is None:
        return "-"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:.{nd}f}"


def main(path):
    rows, noisy = [], 0
    for line in open(path):
        line = line.strip()
        if line.startswith("workload="):
            d = parse(line)
            if d.get("noisy") == "1":  # other processes took CPU during the run (run.sh)
                noisy += 1
                continue
            rows.append(d)

    groups = OrderedDict()
    for d in rows:
        k = (d["workload"], d.get("impl", "?"), d.get("workers", ""), d.get("rate", ""))
        groups.setdefault(k, []).append(d)

    out = []
    for w in ["W1", "W2", "W4"]:
        ks = [k for k in groups if k[0] == w]
        if not ks:
            continue
        out.append(f"\n### {w}\n")
        extra = "workers | " if w == "W2" else ""
        out.append(f"| impl | {extra}n | median s | min–max s | items/s | ns/item | checksum | "
                   "other | user s | sys s | rss MB |")
        out.append("|---|" + ("---|" if w == "W2" else "") + "---|---|---|---|---|---|---|---|---|---|")
        for k in ks:
            ds = groups[k]
            s, r = med(ds, "seconds"), med(ds, "items_per_s")
            rss = med(ds, "rss_kb")
            rss = rss / 1024 if rss else None
            cks = sorted({d.get("checksum", "") for d in ds})
            secs = [float(d["seconds"]) for d in ds]
            rng = f"{min(secs):.3f}–{max(secs):.3f}"
            other = []
            if w == "W1":
                other.append("ordhash=" + ",".join(sorted({d.get("ordhash", "") for d in ds})))
            if w == "W4":
                other.append("unique=" + ",".join(sorted({d.get("unique", "") for d in ds})))
            if "threads" in ds[0]:
                other.append("threads=" + ds[0]["threads"])
            ex = f"{k[2]} | " if w == "W2" else ""
            out.append(f"| {k[1]} | {ex}{len(ds)} | {fmt(s)} | {rng} | {fmt(r, 0)} | "
                       f"{1e9 / r:.1f} | {','.join(cks)} | {' '.join(other)} | "
                       f"{fmt(med(ds, 'user_s'), 2)} | {fmt(med(ds, 'sys_s'), 2)} | {fmt(rss, 0)} |")
        if w == "W2":
            out.append("\nScaling efficiency = rate_2 / (2 * rate_1) (medians):\n")
            impls = OrderedDict()
            for k in ks:
                impls.setdefault(k[1], {})[k[2]] = med(groups[k], "items_per_s")
            pr1 = impls.get("plain", {}).get("1")
            for impl, byw in impls.items():
                if impl == "plain":
                    continue
                r1, r2 = byw.get("1"), byw.get("2")
                if impl == "plain-static":  # reference: its 1-thread rate is the plain loop's
                    r1 = pr1
                if r1 and r2:
                    vs = f"; rate_2 / (2 * plain_rate_1) = {r2 / (2 * pr1):.3f}" if pr1 else ""
                    out.append(f"- {impl}: rate_1={fmt(r1, 0)}/s rate_2={fmt(r2, 0)}/s "
                               f"efficiency={r2 / (2 * r1):.3f}{vs}")
                if pr1 and r1 and impl != "plain-static":
                    out.append(f"- {impl} 1 worker vs plain loop: {r1 / pr1:.3f} of plain rate, "
                               f"{1e9 / r1 - 1e9 / pr1:.0f} ns/item overhead")

    ks = [k for k in groups if k[0] == "W3"]
    if ks:
        n_items = ",".join(sorted({groups[k][0].get("items", "?") for k in ks}))
        out.append(f"\n### W3 io-tail ({n_items} items, lognormal latencies, K = 256 in flight)\n")
        out.append("| impl | mode | n | median s | min–max s | eff (Little) | eff_ideal median | "
                   "eff_ideal min–max | overshoot mean / p99 / min us | max in flight | threads | "
                   "user s | sys s | rss MB |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for k in ks:
            ds = groups[k]
            secs = [float(d["seconds"]) for d in ds]
            effi = [float(d["eff_ideal"]) for d in ds if "eff_ideal" in d]
            effi_rng = f"{min(effi):.4f}–{max(effi):.4f}" if effi else "-"
            thr = ",".join(sorted({d.get("threads", "") for d in ds}))
            mif = ",".join(sorted({d.get("max_in_flight", "") for d in ds}))
            rss = med(ds, "rss_kb")
            out.append(f"| {k[1]} | {ds[0].get('mode', '')} | {len(ds)} | {fmt(med(ds, 'seconds'), 4)} | "
                       f"{min(secs):.4f}–{max(secs):.4f} | {fmt(med(ds, 'eff'), 4)} | "
                       f"{fmt(med(ds, 'eff_ideal'), 4)} | {effi_rng} | "
                       f"{fmt(med(ds, 'overshoot_mean_us'), 1)} / {fmt(med(ds, 'overshoot_p99_us'), 1)} / "
                       f"{fmt(med(ds, 'overshoot_min_us'), 1)} | {mif} | {thr} | "
                       f"{fmt(med(ds, 'user_s'), 2)} | {fmt(med(ds, 'sys_s'), 2)} | "
                       f"{fmt(rss / 1024 if rss else None, 0)} |")
        sums = sorted({d.get("sum_lat_us", "") for d in rows if d.get("workload") == "W3"})
        out.append(f"\nsum_lat_us={','.join(sums)}; eff = (sum_lat / K) / wall, "
                   "eff_ideal = ideal_s / wall (medians of the per-run values).")

    ks = [k for k in groups if k[0] == "latency"]
    if ks:
        out.append("\n### latency (push -> map -> map -> sink, per item)\n")
        out.append("| impl | rate/s | n | achieved/s | p50 us | p95 us | p99 us | p99.9 us | max us | "
                   "pusher max behind us | rss MB |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for k in sorted(ks, key=lambda k: (k[1], float(k[3] or 0))):
            ds = groups[k]
            rss = med(ds, "rss_kb")
            out.append(f"| {k[1]} | {fmt(float(k[3]), 0)} | {len(ds)} | "
                       f"{fmt(med(ds, 'items_per_s'), 0)} | {fmt(med(ds, 'p50_us'), 1)} | "
                       f"{fmt(med(ds, 'p95_us'), 1)} | "
                       f"{fmt(med(ds, 'p99_us'), 1)} | {fmt(med(ds, 'p999_us'), 1)} | "
                       f"{fmt(med(ds, 'max_us'), 0)} | {fmt(med(ds, 'pusher_max_behind_us'), 1)} | "
                       f"{fmt(rss / 1024 if rss else None, 0)} |")

    ks = [k for k in groups if k[0] == "lifecycle"]
    if ks:
        out.append("\n### lifecycle (pipeline new + start + 100 items + drain/wait + free)\n")
        out.append("| impl | n | iterations | mean us | median us | p99 us | max us |")
        out.append("|---|---|---|---|---|---|---|")
        for k in ks:
            ds = groups[k]
            out.append(f"| {k[1]} | {len(ds)} | {ds[0].get('iterations', '')} | "
                       f"{fmt(med(ds, 'mean_us'), 1)} | {fmt(med(ds, 'median_us'), 1)} | "
                       f"{fmt(med(ds, 'p99_us'), 1)} | {fmt(med(ds, 'max_us'), 0)} |")

    ks = [k for k in groups if k[0] == "slowsink"]
    if ks:
        out.append("\n### slowsink (source 1000x faster than sink; RSS in MB)\n")
        out.append("| impl | n | items delivered | RSS after warm-up | max RSS after warm-up | "
                   "RSS at end | peak RSS (time -v) | max in flight | queue peaks | drain s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for k in ks:
            ds = groups[k]
            mb = lambda key: fmt(med(ds, key) / 1024 if med(ds, key) else None, 1)
            out.append(f"| {k[1]} | {len(ds)} | {fmt(med(ds, 'items'), 0)} | "
                       f"{mb('rss_warm_kb')} | {mb('rss_max_after_warm_kb')} | {mb('rss_end_kb')} | "
                       f"{mb('rss_kb')} | {fmt(med(ds, 'max_in_flight'), 0)} | "
                       f"{ds[-1].get('queue_peaks', '')} | {fmt(med(ds, 'drain_s'), 3)} |")

    ks = [k for k in groups if k[0] == "pycall"]
    if ks:
        out.append("\n### pycall (Python map callback via ctypes)\n")
        out.append("| mode | n | items/s | ns/item | callback ns/item |")
        out.append("|---|---|---|---|---|")
        for k in ks:
            ds = groups[k]
            out.append(f"| {ds[0].get('mode', k[1])} | {len(ds)} | {fmt(med(ds, 'items_per_s'), 0)} | "
                       f"{fmt(med(ds, 'ns_per_item'), 1)} | {fmt(med(ds, 'callback_ns_per_item'), 1)} |")
    if noisy:
        out.append(f"\n({noisy} result line(s) left out: other processes used CPU during the run)")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: summarize_median.py RESULTS")
    main(sys.argv[1])
