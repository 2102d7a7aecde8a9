#!/usr/bin/env bash
# run.sh — run every fluxus-bench configuration R times, one process per configuration, under
# /usr/bin/time -v, and print median tables.
#
#   bench/run.sh [-r R] [-o RESULTS] [-b BINARY] [--quick] [--extras] [WORKLOAD ...]
#
#   WORKLOAD   W1 W2 W3 W4 (default), slowsink latency lifecycle
#   -r R       repetitions per configuration (default 5); repetitions are interleaved
#              (cfg A, cfg B, ..., cfg A, cfg B, ...) so that drift hits every configuration alike
#   -o FILE    raw results file (default build/bench/results-<date>.txt); appended to
#   -b BIN     the fluxus-bench binary (default build/bench/fluxus-bench); W1 also runs the
#              configurations of fluxus-bench-static beside it, if it was built
#   --quick    pass --quick (N/100) to every run
#   --extras   also run slowsink, latency, lifecycle and py_callback.py
#   --retries K  re-run a configuration up to K times (default 3) when other processes used more
#              than 0.05 s + 5% of its wall time in CPU while it ran (see foreign_cpu_s below);
#              a run still noisy after that is kept with noisy=1, and the tables leave it out
#
# Each `workload=...` line of a run gets
# ` rss_kb=.. user_s=.. sys_s=.. vcsw=.. ivcsw=.. cfg=.. load1=..` appended: peak RSS, CPU times,
# voluntary and involuntary context switches of that process from /usr/bin/time -v, and the
# 1-minute load average just before the run, and foreign_cpu_s, the CPU seconds that other
# processes used during the run (from /proc/stat; the figures are only worth something on an
# idle machine). Runs that exit non-zero (wrong checksum, API error) are written as `# FAILED ...`
# comments, never as results, and make the script exit 1.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
R=5
out=""
bin="$root/build/bench/fluxus-bench"
quick=""
retries=3
workloads=()
extras=0

while [ $# -gt 0 ]; do
    case "$1" in
        -r) R="$2"; shift 2 ;;
        -o) out="$2"; shift 2 ;;
        -b) bin="$2"; shift 2 ;;
        --quick) quick="--quick"; shift ;;
        --extras) extras=1; shift ;;
        --retries) retries="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "run.sh: unknown option $1" >&2; exit 64 ;;
        *) workloads+=("$1"); shift ;;
    esac
done
[ ${#workloads[@]} -eq 0 ] && workloads=(W1 W2 W3 W4)
[ "$extras" = 1 ] && workloads+=(slowsink latency lifecycle)

if [ ! -x /usr/bin/time ]; then
    echo "run.sh: /usr/bin/time is missing (Debian/Ubuntu: apt-get install time)" >&2
    exit 1
fi
if [ ! -x "$bin" ]; then
    echo "run.sh: $bin not found; build first: meson setup build && meson compile -C build" >&2
    exit 1
fi
[ -z "$out" ] && out="$(dirname "$bin")/results-$(date +%Y%m%d-%H%M%S).txt"

{
    echo "# fluxus-bench run $(date -u +%Y-%m-%dT%H:%M:%SZ) R=$R $quick"
    echo "# nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')\" kernel=$(uname -r)"
} >>"$out"

load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
    echo "run.sh: warning: load average is $load1; other processes will disturb the figures" >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

busy_ticks() { # CPU time used by everything on the machine so far, in USER_HZ ticks
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat
}

field() { # field NAME FILE: value of "NAME: value" in a /usr/bin/time -v report
    awk -F': ' -v k="$1" '$1 ~ k {print $2; exit}' "$2" | tr -d ' '
}

for w in "${workloads[@]}"; do
    # W3 (one process per mode: fluxus-async-unordered, fluxus-async-ordered) also writes its
    # overshoot / hand-off / admission distributions, as '#' comment lines of the raw file.
    wargs=()
    [ "$w" = W3 ] && wargs=(--detail)
    # Each configuration is "binary<TAB>name".
    cfgs=()
    while IFS= read -r c; do cfgs+=("$bin"$'\t'"$c"); done < <("$bin" "$w" --list)
    static_bin="$(dirname "$bin")/fluxus-bench-static"
    if [ "$w" = W1 ] && [ -x "$static_bin" ]; then
        while IFS= read -r c; do cfgs+=("$static_bin"$'\t'"$c"); done < <("$static_bin" W1 --list)
    fi
    if [ ${#cfgs[@]} -eq 0 ]; then
        echo "run.sh: $w has no configurations" >&2
        failures=$((failures + 1))
        continue
    fi
    for ((rep = 1; rep <= R; rep++)); do
        for entry in "${cfgs[@]}"; do
            run_bin=${entry%%$'\t'*}
            cfg=${entry#*$'\t'}
            attempt=0
            while :; do
                attempt=$((attempt + 1))
                echo "run.sh: $w $cfg ($rep/$R)" >&2
                load1=$(cut -d' ' -f1 /proc/loadavg)
                b0=$(busy_ticks)
                t0=$(date +%s.%N)
                /usr/bin/time -v -o "$tmp/time" "$run_bin" "$w" --impl "$cfg" $quick "${wargs[@]}" \
                    >"$tmp/out" 2>"$tmp/err"
                rc=$?
                t1=$(date +%s.%N)
                b1=$(busy_ticks)
                [ $rc -ne 0 ] && break
                rss=$(field 'Maximum resident set size' "$tmp/time")
                usr=$(field 'User time' "$tmp/time")
                sys=$(field 'System time' "$tmp/time")
                vcsw=$(field '^[[:space:]]*Voluntary context switches' "$tmp/time")
                ivcsw=$(field 'Involuntary context switches' "$tmp/time")
                # CPU seconds that other processes used while this one ran (ticks are 10 ms).
                foreign=$(awk -v b0="$b0" -v b1="$b1" -v u="$usr" -v s="$sys" -v hz="$(getconf CLK_TCK)" \
                    'BEGIN { f = (b1 - b0) / hz - u - s; printf "%.2f", f < 0 ? 0 : f }')
                wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
                noisy=$(awk -v f="$foreign" -v w="$wall" 'BEGIN { print (f > 0.05 + 0.05 * w) ? 1 : 0 }')
                if [ "$noisy" = 1 ] && [ "$attempt" -le "$retries" ]; then
                    echo "# NOISY (retrying) foreign_cpu_s=$foreign wall_s=$wall workload=$w cfg=$cfg" >>"$out"
                    echo "run.sh: other processes used ${foreign}s CPU during the run; retrying" >&2
                    sleep 2
                    continue
                fi
                break
            done
            if [ $rc -ne 0 ]; then
                failures=$((failures + 1))
                echo "# FAILED rc=$rc workload=$w cfg=$cfg: $(tail -n 3 "$tmp/err" | tr '\n' ' ')" \
                    | tee -a "$out" >&2
                continue
            fi
            suffix="rss_kb=$rss user_s=$usr sys_s=$sys vcsw=$vcsw ivcsw=$ivcsw cfg=$cfg"
            suffix="$suffix load1=$load1 foreign_cpu_s=$foreign noisy=$noisy"
            while IFS= read -r line; do
                case "$line" in
                    workload=*) echo "${line%% } $suffix" ;;
                    *) echo "# $line" ;;
                esac
            done <"$tmp/out" >>"$out"
        done
    done
done

if [ "$extras" = 1 ]; then
    lib=""
    for f in "$(dirname "$bin")"/../src/libfluxus.so "$(dirname "$bin")"/../src/libfluxus.so.*; do
        if [ -f "$f" ]; then lib=$f; break; fi
    done
    if [ -n "$lib" ]; then
        echo "run.sh: py_callback.py ($R reps)" >&2
        if ! python3 "$here/py_callback.py" "$lib" --reps "$R" $quick >"$tmp/out" 2>"$tmp/err"; then
            failures=$((failures + 1))
            echo "# FAILED py_callback.py: $(tail -n 3 "$tmp/err" | tr '\n' ' ')" | tee -a "$out" >&2
        fi
        grep '^workload=' "$tmp/out" >>"$out"
    else
        echo "run.sh: libfluxus.so not found next to $bin; py_callback.py skipped" >&2
    fi
fi

echo "raw results: $out" >&2
python3 "$here/summarize_median.py" "$out"
if [ $failures -ne 0 ]; then
    echo "run.sh: $failures run(s) failed (see # FAILED lines in $out)" >&2
    exit 1
fi
