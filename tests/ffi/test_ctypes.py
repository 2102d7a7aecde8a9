#!/usr/bin/env python3
"""Drive fluxus from Python through ctypes, as a binding would.

Usage: test_ctypes.py path/to/libfluxus.so

Python standard library only. Python callbacks (CFUNCTYPE) run on fluxus worker threads; ctypes
takes the GIL for each call, and CDLL calls release it, so fluxus_pipeline_wait() blocking in the
main thread does not starve the workers. Exit status 0 means every check passed.
"""

import ctypes
import sys
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_char_p, c_int32, c_uint32, c_uint64,
                    c_void_p)

FLUXUS_OK = 0
FLUXUS_PULL_ITEM = 0
FLUXUS_PULL_END = 1
FLUXUS_ORDER_ORDERED = 0
FLUXUS_ERROR_SKIP = 1
FLUXUS_STATE_FINISHED = 4
FOREVER = 0xFFFFFFFF

USER_FREE = CFUNCTYPE(None, c_void_p)
ITEM_FREE = CFUNCTYPE(None, c_void_p, c_uint64)
PULL = CFUNCTYPE(c_int32, c_void_p, POINTER(c_uint64))
PULL_BATCH = CFUNCTYPE(c_int32, c_void_p, POINTER(c_uint64), c_uint32, POINTER(c_uint32))
MAP = CFUNCTYPE(c_int32, c_void_p, c_uint64, POINTER(c_uint64))
MAP_BATCH = CFUNCTYPE(c_int32, c_void_p, POINTER(c_uint64), POINTER(c_uint64), POINTER(c_int32),
                      c_uint32)
SINK = CFUNCTYPE(c_int32, c_void_p, c_uint64)
SINK_BATCH = CFUNCTYPE(c_int32, c_void_p, POINTER(c_uint64), POINTER(c_int32), c_uint32)


class PipelineStats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("state", c_int32),
        ("admitted", c_uint64),
        ("delivered", c_uint64),
        ("filtered", c_uint64),
        ("failed", c_uint64),
        ("dead_lettered", c_uint64),
        ("cancelled", c_uint64),
        ("in_flight", c_uint64),
        ("dropped", c_uint64),
        ("balanced", c_int32),
        ("result", c_int32),
    ]


class FluxusError(Exception):
    pass


def load(path):
    lib = ctypes.CDLL(path)
    sig = {
        "fluxus_version": (c_char_p, []),
        "fluxus_version_number": (c_int32, []),
        "fluxus_err_name": (c_char_p, [c_int32]),
        "fluxus_last_error_message": (c_char_p, []),
        "fluxus_runtime_new": (c_int32, [POINTER(c_void_p)]),
        "fluxus_runtime_set_workers": (c_int32, [c_void_p, c_uint32]),
        "fluxus_runtime_free": (c_int32, [c_void_p]),
        "fluxus_pipeline_new": (c_int32, [POINTER(c_void_p), c_void_p, c_char_p]),
        "fluxus_pipeline_set_item_free": (c_int32, [c_void_p, ITEM_FREE, c_void_p, USER_FREE]),
        "fluxus_pipeline_set_push_source": (c_int32, [c_void_p, c_char_p]),
        "fluxus_pipeline_set_pull_source": (c_int32, [c_void_p, c_char_p, PULL, c_void_p,
                                                      USER_FREE]),
        "fluxus_pipeline_set_pull_source_batch": (c_int32, [c_void_p, c_char_p, PULL_BATCH,
                                                            c_void_p, USER_FREE]),
        "fluxus_pipeline_add_map": (c_int32, [POINTER(c_uint32), c_void_p, c_char_p, MAP,
                                              c_void_p, USER_FREE]),
        "fluxus_pipeline_add_map_batch": (c_int32, [POINTER(c_uint32), c_void_p, c_char_p,
                                                    MAP_BATCH, c_void_p, USER_FREE]),
        "fluxus_pipeline_add_sink": (c_int32, [POINTER(c_uint32), c_void_p, c_char_p, SINK,
                                               c_void_p, USER_FREE]),
        "fluxus_pipeline_add_sink_batch": (c_int32, [POINTER(c_uint32), c_void_p, c_char_p,
                                                     SINK_BATCH, c_void_p, USER_FREE]),
        "fluxus_stage_set_workers": (c_int32, [c_void_p, c_uint32, c_uint32]),
        "fluxus_stage_set_order": (c_int32, [c_void_p, c_uint32, c_int32]),
        "fluxus_stage_set_error_policy": (c_int32, [c_void_p, c_uint32, c_int32]),
        "fluxus_pipeline_start": (c_int32, [c_void_p]),
        "fluxus_pipeline_push": (c_int32, [c_void_p, c_uint64, c_uint32]),
        "fluxus_pipeline_close_input": (c_int32, [c_void_p]),
        "fluxus_pipeline_wait": (c_int32, [c_void_p, c_uint32]),
        "fluxus_pipeline_get_stats": (c_int32, [POINTER(PipelineStats), c_void_p]),
        "fluxus_pipeline_free": (c_int32, [c_void_p]),
    }
    for name, (restype, argtypes) in sig.items():
        f = getattr(lib, name)
        f.restype = restype
        f.argtypes = argtypes
    return lib


class Checker:
    def __init__(self, lib):
        self.lib = lib
        self.failures = 0

    def ok(self, rc, what):
        """Raise unless a fluxus call returned FLUXUS_OK."""
        if rc != FLUXUS_OK:
            name = self.lib.fluxus_err_name(rc).decode()
            msg = self.lib.fluxus_last_error_message().decode()
            raise FluxusError(f"{what} returned {name}: {msg}")

    def expect(self, cond, what):
        if not cond:
            print(f"check failed: {what}", file=sys.stderr)
            self.failures += 1


class Counter:
    """A counter that Python callbacks on several fluxus workers may bump at once."""

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n=1):
        with self._lock:
            self.value += n


def guarded(fn, failed):
    """A Python exception escaping a ctypes callback is printed and the callback returns 0,
    which fluxus would read as success. Turn it into a nonzero status and remember it."""

    def wrapper(*args):
        try:
            return fn(*args)
        except BaseException as exc:  # anything, since it must never unwind into C
            failed.append(repr(exc))
            return 99

    return wrapper


def run_pipeline(chk, rt_workers, build):
    """Create a runtime and a pipeline, let build() add a source and stages and return a feeder
    (or None), run it to the end, and return (wait status, stats, user_free count)."""
    lib = chk.lib
    user_frees = Counter()
    keep = []  # CFUNCTYPE objects must outlive the pipeline

    @USER_FREE
    def user_free(_user):
        user_frees.add()

    keep.append(user_free)
    rt = c_void_p()
    p = c_void_p()
    chk.ok(lib.fluxus_runtime_new(byref(rt)), "runtime_new")
    try:
        chk.ok(lib.fluxus_runtime_set_workers(rt, rt_workers), "runtime_set_workers")
        chk.ok(lib.fluxus_pipeline_new(byref(p), rt, b"py"), "pipeline_new")
        feed = build(p, user_free, keep)
        chk.ok(lib.fluxus_pipeline_start(p), "pipeline_start")
        if feed is not None:
            feed(p)
        status = lib.fluxus_pipeline_wait(p, FOREVER)
        stats = PipelineStats()
        stats.struct_size = ctypes.sizeof(PipelineStats)
        chk.ok(lib.fluxus_pipeline_get_stats(byref(stats), p), "pipeline_get_stats")
    finally:
        chk.ok(lib.fluxus_pipeline_free(p), "pipeline_free")
        chk.ok(lib.fluxus_runtime_free(rt), "runtime_free")
    return status, stats, user_frees.value


def test_item_callbacks(chk):
    """Push source -> Python map on 2 ordered workers -> Python sink."""
    lib = chk.lib
    n = 20000
    errors = []
    got = []

    def double(_user, item, out):
        out[0] = item * 2
        return 0

    def sink(_user, item):
        got.append(item)
        return 0

    def build(p, user_free, keep):
        m, s = MAP(guarded(double, errors)), SINK(guarded(sink, errors))
        keep += [m, s]
        stage = c_uint32()
        chk.ok(lib.fluxus_pipeline_set_push_source(p, b"host"), "set_push_source")
        chk.ok(lib.fluxus_pipeline_add_map(byref(stage), p, b"double", m, None, user_free),
               "add_map")
        chk.ok(lib.fluxus_stage_set_workers(p, stage, 2), "stage_set_workers")
        chk.ok(lib.fluxus_stage_set_order(p, stage, FLUXUS_ORDER_ORDERED), "stage_set_order")
        chk.ok(lib.fluxus_pipeline_add_sink(None, p, b"collect", s, None, user_free), "add_sink")

        def feed(p):
            for i in range(n):
                chk.ok(lib.fluxus_pipeline_push(p, i, FOREVER), "pipeline_push")
            chk.ok(lib.fluxus_pipeline_close_input(p), "close_input")

        return feed

    status, stats, frees = run_pipeline(chk, 2, build)
    chk.expect(status == FLUXUS_OK, f"wait returned {status}")
    chk.expect(not errors, f"callback errors: {errors[:3]}")
    chk.expect(len(got) == n, f"sink saw {len(got)} items, want {n}")
    chk.expect(sum(got) == n * (n - 1), f"sum {sum(got)}, want {n * (n - 1)}")
    chk.expect(got == sorted(got), "ordered map delivered out of order")
    chk.expect(stats.admitted == n and stats.delivered == n, "admitted/delivered")
    chk.expect(stats.balanced == 1 and stats.in_flight == 0, "stats balance")
    chk.expect(stats.state == FLUXUS_STATE_FINISHED, f"state {stats.state}")
    chk.expect(frees == 2, f"user_free called {frees} times, want 2")


def test_batch_callbacks(chk):
    """Batch pull source -> Python batch map -> Python batch sink."""
    lib = chk.lib
    n = 50000
    errors = []
    next_item = [0]
    total = Counter()
    count = Counter()

    def pull(_user, items, capacity, out_count):
        k = min(capacity, n - next_item[0])
        for j in range(k):
            items[j] = next_item[0] + j
        next_item[0] += k
        out_count[0] = k
        return FLUXUS_PULL_END if next_item[0] == n else FLUXUS_PULL_ITEM

    def plus_one(_user, inp, out, _status, k):
        for j in range(k):
            out[j] = inp[j] + 1
        return 0

    def sink(_user, items, _status, k):
        total.add(sum(items[:k]))
        count.add(k)
        return 0

    def build(p, user_free, keep):
        src = PULL_BATCH(guarded(pull, errors))
        m = MAP_BATCH(guarded(plus_one, errors))
        s = SINK_BATCH(guarded(sink, errors))
        keep += [src, m, s]
        stage = c_uint32()
        chk.ok(lib.fluxus_pipeline_set_pull_source_batch(p, b"range", src, None, user_free),
               "set_pull_source_batch")
        chk.ok(lib.fluxus_pipeline_add_map_batch(byref(stage), p, b"plus-one", m, None,
                                                 user_free), "add_map_batch")
        chk.ok(lib.fluxus_stage_set_workers(p, stage, 2), "stage_set_workers")
        chk.ok(lib.fluxus_pipeline_add_sink_batch(None, p, b"sum", s, None, user_free),
               "add_sink_batch")
        return None

    status, stats, frees = run_pipeline(chk, 2, build)
    want = n * (n + 1) // 2
    chk.expect(status == FLUXUS_OK, f"wait returned {status}")
    chk.expect(not errors, f"callback errors: {errors[:3]}")
    chk.expect(count.value == n, f"sink saw {count.value} items, want {n}")
    chk.expect(total.value == want, f"sum {total.value}, want {want}")
    chk.expect(stats.delivered == n and stats.balanced == 1, "delivered/balanced")
    chk.expect(frees == 3, f"user_free called {frees} times, want 3")


def test_failing_callback_is_skipped_and_destroyed(chk):
    """Host-driven runtime (no fluxus threads); the map fails every 7th item under the SKIP
    policy; failed items go to the item destructor, the rest reach the sink."""
    lib = chk.lib
    n = 700
    errors = []
    next_item = [0]
    destroyed = []
    got = []

    def pull(_user, item):
        if next_item[0] == n:
            return FLUXUS_PULL_END
        item[0] = next_item[0]
        next_item[0] += 1
        return FLUXUS_PULL_ITEM

    def check(_user, item, out):
        if item % 7 == 0:
            return 42
        out[0] = item
        return 0

    def sink(_user, item):
        got.append(item)
        return 0

    def item_free(_user, item):
        destroyed.append(item)

    def build(p, user_free, keep):
        src, m = PULL(guarded(pull, errors)), MAP(guarded(check, errors))
        s, f = SINK(guarded(sink, errors)), ITEM_FREE(item_free)
        keep += [src, m, s, f]
        stage = c_uint32()
        chk.ok(lib.fluxus_pipeline_set_item_free(p, f, None, user_free), "set_item_free")
        chk.ok(lib.fluxus_pipeline_set_pull_source(p, b"range", src, None, user_free),
               "set_pull_source")
        chk.ok(lib.fluxus_pipeline_add_map(byref(stage), p, b"check", m, None, user_free),
               "add_map")
        chk.ok(lib.fluxus_stage_set_error_policy(p, stage, FLUXUS_ERROR_SKIP),
               "stage_set_error_policy")
        chk.ok(lib.fluxus_pipeline_add_sink(None, p, b"collect", s, None, user_free),
               "add_sink")
        return None

    status, stats, frees = run_pipeline(chk, 0, build)
    bad = [i for i in range(n) if i % 7 == 0]
    chk.expect(status == FLUXUS_OK, f"wait returned {status}")
    chk.expect(not errors, f"callback errors: {errors[:3]}")
    chk.expect(sorted(destroyed) == bad, f"destroyed {len(destroyed)} items, want {len(bad)}")
    chk.expect(len(got) == n - len(bad), f"sink saw {len(got)} items, want {n - len(bad)}")
    chk.expect(stats.failed == len(bad), f"failed {stats.failed}, want {len(bad)}")
    chk.expect(stats.balanced == 1, "stats balance")
    chk.expect(frees == 4, f"user_free called {frees} times, want 4")


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} path/to/libfluxus.so", file=sys.stderr)
        return 2
    lib = load(argv[1])
    chk = Checker(lib)
    print(f"loaded fluxus {lib.fluxus_version().decode()} from {argv[1]}")
    # The binding below is written against ABI major version 0.
    chk.expect(lib.fluxus_version_number() // 10000 == 0, "library ABI major version is 0")
    tests = [test_item_callbacks, test_batch_callbacks,
             test_failing_callback_is_skipped_and_destroyed]
    failed = 0
    for test in tests:
        before = chk.failures
        try:
            test(chk)
        except FluxusError as exc:
            print(f"error: {exc}", file=sys.stderr)
            chk.failures += 1
        ok = chk.failures == before
        failed += not ok
        print(f"{'ok' if ok else 'FAIL'} - {test.__name__}")
    print(f"{failed} of {len(tests)} test cases failed")
    return 0 if failed == 0 and chk.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
