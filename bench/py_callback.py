#!/usr/bin/env python3
"""Cost of a Python map callback in fluxus, per item, through ctypes (standard library only).

    python3 bench/py_callback.py [LIBFLUXUS.so] [--n N] [--reps R] [--workers W] [--quick]

Three pipelines run, each R times, all with the same batch pull source (a memmove per batch) and
the same batch sink (one sum() per batch), both written in Python:

  baseline  source -> sink                       (no map: what the per-batch plumbing costs)
  item      source -> map(x+1)       -> sink     (one Python call per item)
  item-pinned-tstate   as item, but each fluxus thread keeps its Python thread state (see
                       map_item_pinned): separates ctypes' per-call thread-state churn from
                       the call itself
  batch     source -> map_batch(x+1) -> sink     (one Python call per batch of up to 256 items)

Each run prints `workload=pycall impl=fluxus-py mode=<mode> items=.. seconds=.. items_per_s=..
ns_per_item=.. callback_ns_per_item=..`, where callback_ns_per_item is ns_per_item minus the
median baseline: the price of the map callback alone. The timed region is the same as in
fluxus-bench (runtime creation to runtime free). The library is the argument, or the first
libfluxus.so* under build/src/ (or build/) next to this script. Exit 1 on a wrong checksum.
"""
import ctypes
import glob
import os
import statistics
import sys
import threading
import time
from ctypes import POINTER, byref, c_char_p, c_int32, c_uint32, c_uint64, c_void_p

FLUXUS_OK = 0
PULL_ITEM, PULL_END = 0, 1
UINT32_MAX = 0xFFFFFFFF

PULL_BATCH = ctypes.CFUNCTYPE(c_int32, c_void_p, POINTER(c_uint64), c_uint32, POINTER(c_uint32))
MAP = ctypes.CFUNCTYPE(c_int32, c_void_p, c_uint64, POINTER(c_uint64))
MAP_BATCH = ctypes.CFUNCTYPE(c_int32, c_void_p, POINTER(c_uint64), POINTER(c_uint64),
                             POINTER(c_int32), c_uint32)
SINK_BATCH = ctypes.CFUNCTYPE(c_int32, c_void_p, POINTER(c_uint64), POINTER(c_int32), c_uint32)


def find_lib(argv_path):
    if argv_path:
        return argv_path
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for pat in ("build/src/libfluxus.so*", "build/libfluxus.so*", "build*/src/libfluxus.so*"):
        hits = sorted(h for h in glob.glob(os.path.join(root, pat)) if os.path.isfile(h))
        if hits:
            return hits[0]
    sys.exit("py_callback.py: libfluxus.so not found; build first or pass its path")


def load(path):
    lib = ctypes.CDLL(path)  # CDLL releases the GIL during calls: fluxus threads can call back
    sig = {
        "fluxus_version_number": (c_int32, []),
        "fluxus_err_name": (c_char_p, [c_int32]),
        "fluxus_last_error_message": (c_char_p, []),
        "fluxus_runtime_new": (c_int32, [POINTER(c_void_p)]),
        "fluxus_runtime_set_workers": (c_int32, [c_void_p, c_uint32]),
        "fluxus_runtime_free": (c_int32, [c_void_p]),
        "fluxus_pipeline_new": (c_int32, [POINTER(c_void_p), c_void_p, c_char_p]),
        "fluxus_pipeline_set_pull_source_batch":
            (c_int32, [c_void_p, c_char_p, PULL_BATCH, c_void_p, c_void_p]),
        "fluxus_pipeline_add_map": (c_int32, [POINTER(c_uint32), c_void_p, c_char_p, MAP,
                                              c_void_p, c_void_p]),
        "fluxus_pipeline_add_map_batch": (c_int32, [POINTER(c_uint32), c_void_p, c_char_p,
                                                    MAP_BATCH, c_void_p, c_void_p]),
        "fluxus_pipeline_add_sink_batch": (c_int32, [POINTER(c_uint32), c_void_p, c_char_p,
                                                     SINK_BATCH, c_void_p, c_void_p]),
        "fluxus_pipeline_start": (c_int32, [c_void_p]),
        "fluxus_pipeline_wait": (c_int32, [c_void_p, c_uint32]),
        "fluxus_pipeline_free": (c_int32, [c_void_p]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    if lib.fluxus_version_number() // 10000 != 0:
        sys.exit("py_callback.py: library major version is not 0")
    return lib


class Api:
    def __init__(self, lib):
        self.lib = lib

    def __getattr__(self, name):
        f = getattr(self.lib, "fluxus_" + name)

        def call(*args):
            rc = f(*args)
            if rc != FLUXUS_OK:
                msg = self.lib.fluxus_last_error_message().decode(errors="replace")
                raise RuntimeError(f"fluxus_{name}: {self.lib.fluxus_err_name(rc).decode()} {msg}")
            return rc
        return call


def run(api, data, n, mode, workers):
    state = {"next": 0, "sum": 0, "count": 0}
    base = ctypes.addressof(data)

    def pull_batch(_user, items, cap, count):
        k = min(cap, n - state["next"])
        ctypes.memmove(items, base + 8 * state["next"], 8 * k)
        state["next"] += k
        count[0] = k
        return PULL_END if state["next"] >= n else PULL_ITEM

    def map_item(_user, x, out):
        out[0] = x + 1
        return 0

    pinned = set()

    def map_item_pinned(_user, x, out):
        # A ctypes callback on a thread without a Python thread state creates one and destroys
        # it again on return (PyGILState_Ensure/Release): microseconds per call. One extra,
        # never released PyGILState_Ensure per thread keeps that thread state alive, so later
        # calls only take the GIL. (What a binding could do once per worker thread.)
        tid = threading.get_ident()
        if tid not in pinned:
            pinned.add(tid)
            ctypes.pythonapi.PyGILState_Ensure()
        out[0] = x + 1
        return 0

    def map_batch(_user, inp, out, _status, count):
        arr = (c_uint64 * count).from_address(ctypes.addressof(out.contents))
        arr[:] = [x + 1 for x in inp[:count]]
        return 0

    def sink_batch(_user, items, _status, count):
        state["sum"] += sum(items[:count])
        state["count"] += count
        return 0

    # Keep the ctypes thunks alive for the pipeline's lifetime.
    cbs = (PULL_BATCH(pull_batch), MAP(map_item), MAP_BATCH(map_batch), SINK_BATCH(sink_batch),
           MAP(map_item_pinned))
    rt, p = c_void_p(), c_void_p()
    t0 = time.perf_counter()
    api.runtime_new(byref(rt))
    if workers:
        api.runtime_set_workers(rt, workers)
    api.pipeline_new(byref(p), rt, b"pycall")
    api.pipeline_set_pull_source_batch(p, b"src", cbs[0], None, None)
    if mode == "item":
        api.pipeline_add_map(None, p, b"map", cbs[1], None, None)
    elif mode == "item-pinned-tstate":
        api.pipeline_add_map(None, p, b"map", cbs[4], None, None)
    elif mode == "batch":
        api.pipeline_add_map_batch(None, p, b"map", cbs[2], None, None)
    api.pipeline_add_sink_batch(None, p, b"sink", cbs[3], None, None)
    api.pipeline_start(p)
    api.pipeline_wait(p, UINT32_MAX)
    api.pipeline_free(p)
    api.runtime_free(rt)
    secs = time.perf_counter() - t0
    add = 0 if mode == "baseline" else n
    want = n * (n - 1) // 2 + add
    ok = state["count"] == n and state["sum"] == want
    if not ok:
        print(f"py_callback.py: CHECK FAILED mode={mode} count={state['count']} sum={state['sum']}"
              f" expected {n} / {want}", file=sys.stderr)
    return secs, state["sum"], ok


def main():
    args = sys.argv[1:]
    path, n, reps, workers = None, 200000, 3, 0
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--n":
            n = int(args[i + 1]); i += 2
        elif a == "--reps":
            reps = int(args[i + 1]); i += 2
        elif a == "--workers":
            workers = int(args[i + 1]); i += 2
        elif a == "--quick":
            n, reps = 20000, 1; i += 1
        elif a.startswith("-"):
            sys.exit(__doc__)
        else:
            path = a; i += 1
    api = Api(load(find_lib(path)))
    data = (c_uint64 * n)(*range(n))
    failed = 0
    base_ns = None
    for mode in ("baseline", "item", "item-pinned-tstate", "batch"):
        per = []
        for _ in range(reps):
            secs, checksum, ok = run(api, data, n, mode, workers)
            failed += not ok
            ns = secs * 1e9 / n
            per.append(ns)
            cb = "-" if base_ns is None else f"{ns - base_ns:.1f}"
            print(f"workload=pycall impl=fluxus-py-{mode} mode={mode} items={n} seconds={secs:.6f} "
                  f"items_per_s={n / secs:.1f} ns_per_item={ns:.1f} callback_ns_per_item={cb} "
                  f"checksum={checksum} workers={workers or 'default'} "
                  f"python={sys.version.split()[0]}", flush=True)
        if mode == "baseline":
            base_ns = statistics.median(per)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
