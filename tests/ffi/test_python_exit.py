#!/usr/bin/env python3
"""A Python host that exits its interpreter while a pipeline is running must not abort.

Usage: test_python_exit.py path/to/libfluxus.so

The parent runs a child interpreter that starts a pipeline whose Python callbacks are slow, then
exits without waiting. While the interpreter finalizes, the fluxus worker threads that call
into Python are ended by the interpreter with pthread_exit() (CPython up to 3.13: a thread that
wants the GIL of a finalizing interpreter exits), which on glibc unwinds through fluxus as a
forced unwind. Before fluxus rethrew those, that aborted the process with "FATAL: exception not
rethrown". Newer CPythons (3.14 on) hang such threads instead of ending them: the process then
exits with those threads blocked, which this test accepts just the same.
"""

import ctypes
import subprocess
import sys
import time
from ctypes import CFUNCTYPE, POINTER, byref, c_char_p, c_int32, c_uint32, c_uint64, c_void_p

CHILD = r"""
import ctypes, sys, time
from ctypes import CFUNCTYPE, POINTER, byref, c_char_p, c_int32, c_uint32, c_uint64, c_void_p
lib = ctypes.CDLL(sys.argv[1])
for name, res, args in [
    ("fluxus_runtime_new", c_int32, [POINTER(c_void_p)]),
    ("fluxus_runtime_set_workers", c_int32, [c_void_p, c_uint32]),
    ("fluxus_pipeline_new", c_int32, [POINTER(c_void_p), c_void_p, c_char_p]),
    ("fluxus_pipeline_set_pull_source", c_int32, [c_void_p, c_char_p, c_void_p, c_void_p, c_void_p]),
    ("fluxus_pipeline_add_map", c_int32, [c_void_p, c_void_p, c_char_p, c_void_p, c_void_p, c_void_p]),
    ("fluxus_stage_set_workers", c_int32, [c_void_p, c_uint32, c_uint32]),
    ("fluxus_stage_set_order", c_int32, [c_void_p, c_uint32, c_int32]),
    ("fluxus_pipeline_add_sink", c_int32, [c_void_p, c_void_p, c_char_p, c_void_p, c_void_p, c_void_p]),
    ("fluxus_pipeline_set_batch_size", c_int32, [c_void_p, c_uint32]),
    ("fluxus_pipeline_start", c_int32, [c_void_p]),
]:
    f = getattr(lib, name); f.restype = res; f.argtypes = args
PULL = CFUNCTYPE(c_int32, c_void_p, POINTER(c_uint64))
MAP = CFUNCTYPE(c_int32, c_void_p, c_uint64, POINTER(c_uint64))
SINK = CFUNCTYPE(c_int32, c_void_p, c_uint64)
state = {"next": 0}
def pull(user, item):
    item[0] = state["next"]; state["next"] += 1
    return 0
def slow_map(user, x, out):
    time.sleep(0.002)
    out[0] = x
    return 0
def sink(user, x):
    return 0
keep = [PULL(pull), MAP(slow_map), SINK(sink)]
rt = c_void_p(); p = c_void_p(); stage = c_uint32()
assert lib.fluxus_runtime_new(byref(rt)) == 0
assert lib.fluxus_runtime_set_workers(rt, 4) == 0
assert lib.fluxus_pipeline_new(byref(p), rt, b"exit-mid-run") == 0
assert lib.fluxus_pipeline_set_batch_size(p, 4) == 0
assert lib.fluxus_pipeline_set_pull_source(p, b"in", ctypes.cast(keep[0], c_void_p), None, None) == 0
assert lib.fluxus_pipeline_add_map(byref(stage), p, b"slow", ctypes.cast(keep[1], c_void_p), None, None) == 0
assert lib.fluxus_stage_set_workers(p, stage.value, 3) == 0
assert lib.fluxus_stage_set_order(p, stage.value, 1) == 0
assert lib.fluxus_pipeline_add_sink(None, p, b"sink", ctypes.cast(keep[2], c_void_p), None, None) == 0
assert lib.fluxus_pipeline_start(p) == 0
time.sleep(0.2)
print("exiting mid-run", flush=True)
sys.exit(0)  # no wait, no free: the interpreter finalizes with the pipeline running
"""


def main():
    lib = sys.argv[1]
    failures = 0
    for attempt in range(3):
        start = time.monotonic()
        try:
            r = subprocess.run([sys.executable, "-c", CHILD, lib], capture_output=True, text=True,
                               timeout=60)
        except subprocess.TimeoutExpired:
            print("child interpreter did not exit within 60 s")
            return 1
        took = time.monotonic() - start
        if r.returncode != 0 or "FATAL" in r.stderr or "exiting mid-run" not in r.stdout:
            print(f"attempt {attempt}: exit status {r.returncode} after {took:.2f} s")
            print("stdout:", r.stdout)
            print("stderr:", r.stderr)
            failures += 1
        else:
            print(f"attempt {attempt}: exited cleanly in {took:.2f} s")
    print(f"python {sys.version.split()[0]}: {3 - failures} of 3 runs exited cleanly")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
