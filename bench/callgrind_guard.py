#!/usr/bin/env python3
"""callgrind_guard.py — a deterministic performance guard: instructions per item, not seconds.

Runs fluxus-bench under `valgrind --tool=callgrind` for W1 (fluxus-item), W2 (fluxus-w2) and W4
(fluxus-dedup), each at two item counts, and compares the engine's instructions per item with
bench/callgrind_baseline.txt. It fails when a figure is more than 10 % above its baseline and
says so (without failing) when one is more than 10 % below: then the baseline should move, in a
commit that says why.

What is counted (see BENCHMARK.md, "Instruction-count guard"):
  * fluxus-bench, built with valgrind/callgrind.h, switches callgrind's instrumentation on just
    before fluxus_runtime_new() and off just after fluxus_runtime_free(), so only the timed region
    counts, on every thread (--instr-atstart=no); computing the expected checksums does not.
  * Ir per item = (Ir(large) - Ir(small)) / (large - small): runtime start-up, thread creation
    and teardown cancel out.
  * "engine" is every instruction outside the fluxus-bench executable (libfluxus.so and the libuv,
    libc, libstdc++ code it calls); that is the guarded figure. The workload's own callbacks
    ("callbacks", inside fluxus-bench) are the same for every engine and are printed beside it.

    bench/callgrind_guard.py [--bench build/bench/fluxus-bench] [--runs K] [--update]

Exit status: 0 all within bounds, 1 a figure above its bound (or a failed run), 77 skipped
(no valgrind, a sanitizer build, a bench built without valgrind/callgrind.h, or a build type or
compiler the baseline was not measured for), 2 bad usage. --keep DIR keeps the callgrind files
(DIR/<workload>-<items>.out) for callgrind_annotate.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SKIP = 77
LIMIT_UP = 1.10    # fail above baseline * LIMIT_UP
LIMIT_DOWN = 0.90  # below baseline * LIMIT_DOWN: a hint to move the baseline, not a failure

# name, fluxus-bench arguments, (small, large) item counts. Changing the counts changes the
# figures (a hash set's growth steps fall differently), so it needs an --update.
WORKLOADS = [
    ("W1", ["W1", "--impl", "fluxus-item"], (100_000, 1_000_000)),
    ("W2", ["W2", "--impl", "fluxus-w2"], (10_000, 100_000)),
    ("W4", ["W4", "--impl", "fluxus-dedup"], (100_000, 500_000)),
]

VALGRIND_ARGS = [
    "--tool=callgrind",
    "--instr-atstart=no",      # the bench switches instrumentation on for its timed region
    "--compress-strings=no",   # plain names and positions: simpler to read back
    "--compress-pos=no",
]


def say(msg):
    print("callgrind-guard: " + msg, flush=True)


def parse_callgrind(path):
    """Self cost (Ir) per object of one callgrind output file, and the file's totals: line."""
    per_ob = {}
    ob = None
    skip_cost = False
    totals = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if skip_cost:  # the line after calls= is the call's inclusive cost: not self cost
                skip_cost = False
                continue
            if not line.strip() or line[0] == "#":
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                if len(parts) > 1:
                    per_ob[ob] = per_ob.get(ob, 0) + int(parts[1])
                continue
            if line.startswith("ob="):
                ob = line[3:].rstrip("\n")
            elif line.startswith("calls="):
                skip_cost = True
            elif line.startswith("totals:"):
                totals = int(line.split()[1])
            elif line.startswith("events:") and line.split()[1:] != ["Ir"]:
                raise RuntimeError("%s: expected only the Ir event, got %s" % (path, line.strip()))
    if totals is None or totals != sum(per_ob.values()):
        raise RuntimeError("%s: self costs (%d) do not add up to totals (%s)"
                           % (path, sum(per_ob.values()), totals))
    return per_ob, totals


def run_once(bench, name, args, items, tmp, extra_vg):
    """Run one configuration under callgrind; return (total Ir, Ir inside fluxus-bench, Ir per
    object)."""
    out = os.path.join(tmp, "%s-%d.out" % (name, items))
    if os.path.exists(out):
        os.unlink(out)
    cmd = (["valgrind"] + VALGRIND_ARGS + extra_vg + ["--callgrind-out-file=" + out, bench]
           + args + ["--items", str(items)])
    # meson test sets MALLOC_PERTURB_, which makes glibc's malloc and free fill memory: counted
    # instructions that a run by hand would not have.
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_PERTURB_", "MALLOC_CHECK_")}
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise RuntimeError("exit %d: %s" % (r.returncode, " ".join(cmd)))
    if not re.search(r"^workload=\S+ impl=\S+ items=%d " % items, r.stdout, re.M):
        sys.stderr.write(r.stdout)
        raise RuntimeError("no result line for %d items: %s" % (items, " ".join(cmd)))
    per_ob, total = parse_callgrind(out)
    if total == 0:
        raise RuntimeError("callgrind counted nothing: fluxus-bench was built without "
                           "valgrind/callgrind.h (FLUXUS_BENCH_CALLGRIND)")
    real = os.path.realpath(bench)
    mine = sum(v for k, v in per_ob.items() if k and os.path.realpath(k) == real)
    if mine == 0:
        raise RuntimeError("no cost in %s itself; objects seen: %s" % (bench, sorted(per_ob)))
    return total, mine, per_ob


def measure(bench, name, args, sizes, tmp, extra_vg):
    """Ir per item (engine, total, callbacks, and per object) from the difference of the two
    sizes."""
    small, large = sizes
    t_s, b_s, ob_s = run_once(bench, name, args, small, tmp, extra_vg)
    t_l, b_l, ob_l = run_once(bench, name, args, large, tmp, extra_vg)
    d = float(large - small)
    total = (t_l - t_s) / d
    callbacks = (b_l - b_s) / d
    per_ob = {os.path.basename(k or "???"): (ob_l.get(k, 0) - ob_s.get(k, 0)) / d
              for k in set(ob_s) | set(ob_l)}
    return {"engine": total - callbacks, "total": total, "callbacks": callbacks,
            "objects": per_ob}


def read_baseline(path):
    """{workload: {key: value}} and the build line's {key: value}."""
    base, build = {}, {}
    if not os.path.exists(path):
        return base, build
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            head, *rest = line.split()
            kv = dict(x.split("=", 1) for x in rest)
            if head == "build":
                build = kv
            else:
                base[head] = kv
    return base, build


def build_options(bench):
    """buildtype and b_sanitize of the Meson build dir that holds bench, if it is one."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(bench))), "meson-info",
                        "intro-buildoptions.json")
    try:
        with open(path, encoding="utf-8") as f:
            return {x["name"]: str(x["value"]) for x in json.load(f)
                    if x["name"] in ("buildtype", "b_sanitize")}
    except (OSError, ValueError, KeyError):
        return {}


def git_commit():
    """HEAD, with "+uncommitted" when the code the figures depend on differs from it (the usual
    case when a baseline moves together with a hot-path change)."""
    def git(*a):
        return subprocess.run(["git", "-C", ROOT] + list(a), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        head = git("rev-parse", "--short=12", "HEAD").stdout.strip()
        changed = git("status", "--porcelain", "--", "src", "include", "subprojects",
                      "meson.build", "meson_options.txt", "bench/fluxus_bench.cpp",
                      "bench/workloads.h").stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+uncommitted" if changed else "")


def write_baseline(path, results, build, keep):
    """Write every workload's line: from results if measured now, else the old line (keep)."""
    lines = [
        "# Baselines of bench/callgrind_guard.py: callgrind instructions per item of the",
        "# fluxus configurations below, outside the fluxus-bench executable (engine_ir;",
        "# total_ir includes the workload's own callbacks), from the difference of two item",
        "# counts (items=small,large). The guard fails above 1.10 x engine_ir. Move these",
        "# figures only in a commit that says why. Rewritten by",
        "# meson test -C build --suite perf-guard --test-args=--update (see BENCHMARK.md).",
        "build " + " ".join("%s=%s" % kv for kv in build.items()),
    ]
    date = time.strftime("%Y-%m-%d", time.gmtime())
    commit = git_commit()
    for name, args, sizes in WORKLOADS:
        if name not in results:
            lines.append(name + " " + " ".join("%s=%s" % kv for kv in keep[name].items()))
            continue
        r = results[name]
        lines.append("%s impl=%s items=%d,%d engine_ir=%.2f total_ir=%.2f commit=%s date=%s"
                     % (name, args[2], sizes[0], sizes[1], r["engine"], r["total"], commit, date))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "fluxus-bench"))
    ap.add_argument("--baseline", default=os.path.join(HERE, "callgrind_baseline.txt"))
    ap.add_argument("--update", action="store_true",
                    help="rewrite the baseline file (with --workload: only those lines)")
    ap.add_argument("--runs", type=int, default=1,
                    help="measure each workload K times and use the median (prints the spread)")
    ap.add_argument("--workload", action="append", help="only this workload (W1, W2, W4)")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind output files in DIR")
    ap.add_argument("--sanitize", default="", help="the build's b_sanitize (meson passes it)")
    ap.add_argument("--buildtype", default="", help="the build's buildtype (meson passes it)")
    ap.add_argument("--compiler", default="", help="the compiler id and version (meson passes it)")
    ap.add_argument("--have-callgrind-h", default="true",
                    help="whether fluxus-bench was built with valgrind/callgrind.h")
    ap.add_argument("--valgrind-arg", action="append", default=[],
                    help="extra valgrind option (experiments; not for baselines)")
    o = ap.parse_args()
    if not o.sanitize or not o.buildtype:  # run by hand: read them from the bench's build dir
        opts = build_options(o.bench)
        o.sanitize = o.sanitize or opts.get("b_sanitize", "none")
        o.buildtype = o.buildtype or opts.get("buildtype", "")
    if o.update and not (o.compiler and o.buildtype):
        ap.error("--update records the build type and compiler; run it through meson: "
                 "meson test -C build --suite perf-guard --test-args=--update -v")

    if o.sanitize not in ("", "none"):
        say("skipped: valgrind cannot run a sanitized build (b_sanitize=%s)" % o.sanitize)
        return SKIP
    if not shutil.which("valgrind"):
        say("skipped: valgrind not found (Debian: apt-get install valgrind)")
        return SKIP
    if o.have_callgrind_h != "true":
        say("skipped: fluxus-bench was built without valgrind/callgrind.h; reconfigure the "
            "build after installing valgrind")
        return SKIP
    if not os.access(o.bench, os.X_OK):
        say("%s not found; build first (meson compile -C build)" % o.bench)
        return 1
    if o.runs < 1:
        ap.error("--runs must be at least 1")

    base, build = read_baseline(o.baseline)
    if not o.update:
        if not base:
            say("no baseline in %s; create it with --update" % o.baseline)
            return 1
        want_bt = build.get("buildtype", "")
        if o.buildtype and want_bt and o.buildtype != want_bt:
            say("skipped: the baselines are for buildtype=%s, this build is %s"
                % (want_bt, o.buildtype))
            return SKIP
        want_cc = build.get("compiler", "")
        if o.compiler and want_cc and o.compiler.split("-")[0] != want_cc.split("-")[0]:
            # Another compiler is another program: its counts say nothing against these.
            say("skipped: the baselines are for %s, this build uses %s" % (want_cc, o.compiler))
            return SKIP
        if o.compiler and build.get("compiler") and o.compiler != build["compiler"]:
            say("warning: the baselines were measured with %s, this build uses %s; a change of "
                "compiler moves the figures" % (build["compiler"], o.compiler))
        if build.get("nproc") and build["nproc"] != str(os.cpu_count()):
            say("warning: the baselines were measured with %s CPUs, this machine has %s; the "
                "runtime starts one worker per CPU, which moves W2's figure"
                % (build["nproc"], os.cpu_count()))

    names = o.workload or [w[0] for w in WORKLOADS]
    unknown = set(names) - {w[0] for w in WORKLOADS}
    if unknown:
        ap.error("unknown workload(s): %s" % ", ".join(sorted(unknown)))
    if o.update and o.workload and base:
        old = (build.get("buildtype"), build.get("compiler"), build.get("nproc"))
        if old != (o.buildtype, o.compiler, str(os.cpu_count())):
            ap.error("--update --workload keeps the other lines, but they were measured on "
                     "another build (%s); update every workload" % " ".join(map(str, old)))

    failures = 0
    results = {}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="callgrind-guard-") as tmp:
        if o.keep:
            os.makedirs(o.keep, exist_ok=True)
            tmp = o.keep
        for name, args, sizes in WORKLOADS:
            if name not in names:
                continue
            t0 = time.monotonic()
            try:
                runs = [measure(o.bench, name, args, sizes, tmp, o.valgrind_arg)
                        for _ in range(o.runs)]
            except RuntimeError as e:
                say("FAIL %s %s: %s" % (name, args[2], e))
                failures += 1
                continue
            r = {k: statistics.median(x[k] for x in runs) for k in ("engine", "total",
                                                                     "callbacks")}
            results[name] = r
            eng = [x["engine"] for x in runs]
            spread = ""
            if o.runs > 1:
                spread = " spread %.3f %% (min %.3f max %.3f over %d runs)" % (
                    100.0 * (max(eng) - min(eng)) / r["engine"], min(eng), max(eng), o.runs)
            line = ("%s %s: engine %.2f Ir/item (total %.2f, callbacks %.2f; items %d..%d; %.0f s)"
                    % (name, args[2], r["engine"], r["total"], r["callbacks"], sizes[0],
                       sizes[1], time.monotonic() - t0) + spread)
            b = base.get(name)
            if o.update or b is None:
                say(line + ("" if o.update else "; no baseline for it"))
                if not o.update:
                    failures += 1
                continue
            if b.get("items") != "%d,%d" % sizes or b.get("impl") != args[2]:
                say(line)
                say("FAIL %s: the baseline was measured on %s items=%s; this script runs %s "
                    "items=%d,%d: run --update" % (name, b.get("impl"), b.get("items"), args[2],
                                                   sizes[0], sizes[1]))
                failures += 1
                continue
            ref = float(b["engine_ir"])
            ratio = r["engine"] / ref
            say("%s; baseline %.2f (commit %s), ratio %.3f" % (line, ref, b.get("commit", "?"),
                                                              ratio))
            if ratio > LIMIT_UP:
                say("FAIL %s %s: %.2f Ir/item against a baseline of %.2f: ratio %.3f is more "
                    "than %d %% above. Find what made the hot path longer, or, if the cost is "
                    "meant, move the baseline with --update in a commit that says why."
                    % (name, args[2], r["engine"], ref, ratio, round((LIMIT_UP - 1) * 100)))
                split = sorted(runs[-1]["objects"].items(), key=lambda kv: -abs(kv[1]))
                say("  Ir/item by object (last run): " + ", ".join(
                    "%s %.2f" % kv for kv in split if abs(kv[1]) >= 0.01))
                if o.keep:
                    say("  where in the code: callgrind_annotate %s"
                        % os.path.join(o.keep, "%s-%d.out" % (name, sizes[1])))
                else:
                    say("  where in the code: rerun with --keep DIR, then callgrind_annotate "
                        "DIR/%s-%d.out" % (name, sizes[1]))
                failures += 1
            elif ratio < LIMIT_DOWN:
                say("note: %s %s is %.1f %% below its baseline (%.2f against %.2f): move the "
                    "baseline down with --update, in a commit that says why, so the guard "
                    "keeps the gain" % (name, args[2], 100 * (1 - ratio), r["engine"], ref))

    if o.update:
        if failures:
            say("baseline not written: %d workload(s) failed" % failures)
            return 1
        build = {"buildtype": o.buildtype, "compiler": o.compiler, "nproc": str(os.cpu_count())}
        missing = [w[0] for w in WORKLOADS if w[0] not in results and w[0] not in base]
        if missing:
            say("baseline not written: no figure for %s; update every workload"
                % ", ".join(missing))
            return 1
        write_baseline(o.baseline, results, build, base)
        say("wrote %s" % o.baseline)
    say("%s in %.0f s" % ("%d failure(s)" % failures if failures else "all within bounds",
                          time.monotonic() - start))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
