#!/usr/bin/env python3
"""test_conventions.py — the header's conventions (docs/design/contract-1.0.md), checked.

Reads the machine-readable API that tools/fluxus_api.py makes from include/fluxus.h (the same description as include/fluxus-api.json) and checks
every rule a binding author relies on. Each violation is one line "rule: where: why".

Issue 14 is being implemented in steps, so the violations the header still has are listed in
tests/contract/conventions_pending.txt. The test fails on a violation that is not listed (a new
one) and on a listed one that no longer occurs (fixed: delete its line), so the list can only
shrink; the contract is done when it is empty.

    test_conventions.py --header include/fluxus.h --map src/fluxus.map \
        --pending tests/contract/conventions_pending.txt [--lib build/src/libfluxus.so]
        [--write-pending]

With --lib, every fluxus_*_free is also called with NULL (it must return FLUXUS_OK).
"""
import argparse
import ctypes
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import fluxus_api  # noqa: E402

# The functions that cannot fail and so return a value, not a status. fluxus_last_error_message
# takes no handle and always has a string to return ("" when nothing failed);
# fluxus_last_error_copy is its status-returning form for hosts that need a copy.
PURE = {"fluxus_version", "fluxus_version_number", "fluxus_strerror", "fluxus_err_name",
        "fluxus_last_error_message"}
# A parameter of one of these types is written by the function, so it must be named out or
# out_<what>: a pointer to a scalar, or to a pointer the function fills in.
OUT_TYPES = re.compile(r"^(u?int(8|16|32|64)_t|size_t|const char \*|const fluxus_\w+ \*|"
                       r"fluxus_\w+_stats|fluxus_\w+ \*) \*$")
# Prefixes that name no object: library-wide functions and the current-call accessors.
GLOBAL_PREFIXES = ("fluxus_version", "fluxus_strerror", "fluxus_err_name", "fluxus_last_error",
                   "fluxus_option_",
                   "fluxus_call_")
# Verbs of functions that do something and may report a result through an out-parameter; any
# other function with an out-parameter is a reader and must say _get_.
ACTION_VERBS = ("new", "add", "build", "push", "run", "call", "copy", "acquire", "try", "allow",
                "emit", "complete", "register", "lookup", "start", "wait", "drain", "parse")
# Words (between underscores) that make a parameter or field a duration; a name with a unit
# suffix is a duration or a time as well.
TIME_WORDS = ("timeout", "delay", "interval", "ttl", "budget", "period", "age")
# Groups of constants that are not enumerations (their values may repeat).
NOT_ENUMS = ("FLUXUS_VERSION_",)
STATUS_CODES_REQUIRED = ("FLUXUS_EINTERNAL", "FLUXUS_ENOTSUP")
# The experimental tier (contract-1.0.md, section 8): join, loader and cache, sliding windows,
# the cursor source and the spec grammar (with its registry).
EXPERIMENTAL = re.compile(r"join|loader|_cache|sliding|cursor|^fluxus_pipeline_build|"
                          r"^fluxus_registry_")


def object_of(name, handles):
    """The object a function's prefix names: ('pipeline', 'fluxus_pipeline'), or None."""
    best = None
    for h in handles:
        obj = h[len("fluxus_"):]
        if name.startswith("fluxus_" + obj + "_") and (best is None or len(obj) > len(best[0])):
            best = (obj, h)
    if name.startswith("fluxus_stage_"):
        return ("stage", "fluxus_pipeline")
    return best


def is_time(name):
    words = name.split("_")
    return any(w in TIME_WORDS for w in words) or words[-1] in ("us", "ms", "ns")


def is_buffer_cap(params, i):
    return (i > 0 and params[i - 1]["out"] and params[i - 1]["type"] in ("char *", "void *")
            and params[i]["name"] in ("cap", "capacity", "size", "len"))


def check(api):
    v = []
    handles = [h["name"] for h in api["handles"]]
    callback_types = {c["name"] for c in api["callbacks"]}
    for f in api["functions"]:
        name, params = f["name"], f["params"]
        # Every function returns a status, except the pure ones.
        if name not in PURE and f["returns"] != "int32_t":
            v.append("status-return: %s: returns %s (a bad handle must be an error, not a "
                     "sentinel value)" % (name, f["returns"]))
        # Out-parameters are named so.
        for p in params:
            if OUT_TYPES.match(p["type"]) and not p["out"]:
                v.append("out-name: %s: parameter '%s' (%s) is written but not named out or "
                         "out_<what>" % (name, p["name"], p["type"]))
        # Out-parameters first (a buffer and its capacity count as one out-parameter).
        seen_in = False
        for i, p in enumerate(params):
            if p["out"] or is_buffer_cap(params, i):
                if seen_in:
                    v.append("out-first: %s: out-parameter '%s' after an input" % (name, p["name"]))
                    break
            else:
                seen_in = True
        # Readers say _get_.
        outs = [p for p in params if p["out"]]
        verb_words = name[len("fluxus_"):].split("_")
        if outs and "get" not in verb_words and not any(w in ACTION_VERBS for w in verb_words):
            v.append("getter-verb: %s: reads through an out-parameter but has no _get_" % name)
        # Object prefix = first argument (after the out-parameters).
        first_in = next((p for i, p in enumerate(params)
                         if not p["out"] and not is_buffer_cap(params, i)), None)
        obj = object_of(name, handles)
        if name.startswith(GLOBAL_PREFIXES):
            pass
        elif obj is None:
            v.append("object-prefix: %s: its prefix names no object" % name)
        elif obj[0] == "stage":
            ok = (first_in is not None and first_in["type"] == "fluxus_pipeline *")
            later = [p for p in params if not p["out"]]
            if not ok or len(later) < 2 or later[1]["name"] != "stage":
                v.append("object-prefix: %s: a stage function takes (pipeline, stage) first"
                         % name)
        elif "_new" not in name and (first_in is None or
                                     first_in["type"].replace("const ", "") != obj[1] + " *"):
            v.append("object-prefix: %s: first argument is not the %s" % (name, obj[1]))
        # Durations and times: one unit, microseconds, named.
        for p in params:
            n = p["name"]
            if is_time(n) and not n.endswith("_us") and n != "us":
                v.append("unit: %s: parameter '%s' is a duration or time without _us"
                         % (name, n))
        for u in ("_ms", "_ns"):
            if u in name:
                v.append("unit: %s: the function's name carries %s (the API's unit is us)"
                         % (name, u))
        # Registrations: (fn, user, user_free).
        cbs = [i for i, p in enumerate(params) if p["type"] in callback_types
               and p["type"] != "fluxus_user_free_fn"]
        if cbs and name != "fluxus_registry_register":
            users = [i for i, p in enumerate(params) if p["name"] == "user"]
            if not users or users[0] + 1 >= len(params) or \
                    params[users[0] + 1]["type"] != "fluxus_user_free_fn":
                v.append("registration: %s: takes a callback without (user, user_free)" % name)
        # Tier: in exactly one version node, experimental ones in an experimental node.
        node = f["version_node"]
        if not node:
            v.append("tier: %s: in no version node of src/fluxus.map" % name)
        elif f["experimental"] != ("EXPERIMENTAL" in node):
            v.append("tier: %s: %s but exported under %s"
                     % (name, "experimental" if f["experimental"] else "stable", node))
        if EXPERIMENTAL.search(name) and not f["experimental"]:
            v.append("tier: %s: an experimental feature declared in the stable tier" % name)
        # Documented, with its return codes.
        if not f["documented"]:
            v.append("doc: %s: no doc block" % name)
        elif f["returns"] == "int32_t" and not f["return_codes"]:
            v.append("doc: %s: no @return codes" % name)
    for c in api["callbacks"]:
        if c["name"] != "fluxus_any_fn" and "concurrency" not in c:
            v.append("concurrency: %s: no row in the callback concurrency table" % c["name"])
        for p in c["params"]:
            n = p["name"]
            if is_time(n) and not n.endswith("_us"):
                v.append("unit: %s: parameter '%s' is a duration or time without _us"
                         % (c["name"], n))
    for s in api["structs"]:
        for p in s["fields"]:
            n = p["name"]
            if is_time(n) and not n.endswith("_us"):
                v.append("unit: %s: field '%s' is a duration or time without _us"
                         % (s["name"], n))
    # Constant groups: one block per prefix, values not overlapping another group's.
    groups = {}
    order = []
    for k in api["constants"]:
        g = k["group"]
        if g not in groups:
            groups[g] = []
            order.append(g)
        groups[g].append(k)
    blocks = []
    for k in api["constants"]:
        if not blocks or blocks[-1][0] != k["group"]:
            blocks.append((k["group"], []))
        blocks[-1][1].append(k["name"])
    seen = {}
    for g, names in blocks:
        if g in seen:
            v.append("constant-group: %s: declared in two places (%s and %s)"
                     % (g, seen[g][0], names[0]))
        seen.setdefault(g, names)
    for g, ks in groups.items():
        vals = [k["value"] for k in ks]
        if g not in NOT_ENUMS and len(vals) != len(set(vals)):
            v.append("constant-group: %s: two constants share a value" % g)
    status = {k["name"] for k in groups.get("status", [])}
    for code in STATUS_CODES_REQUIRED:
        if code not in status:
            v.append("status-code: %s: missing" % code)
    return v


def check_free_null(api, lib_path):
    """Every fluxus_*_free accepts NULL and returns FLUXUS_OK."""
    v = []
    lib = ctypes.CDLL(lib_path)
    for f in api["functions"]:
        if not f["name"].endswith("_free") or len(f["params"]) != 1:
            continue
        fn = getattr(lib, f["name"])
        fn.restype = ctypes.c_int32
        fn.argtypes = [ctypes.c_void_p]
        rc = fn(None)
        if rc != 0:
            v.append("free-null: %s: returns %d for NULL" % (f["name"], rc))
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--header", required=True)
    ap.add_argument("--map", required=True)
    ap.add_argument("--pending", required=True)
    ap.add_argument("--lib")
    ap.add_argument("--write-pending", action="store_true",
                    help="rewrite the pending list from the header (only to shrink it)")
    o = ap.parse_args()
    api = fluxus_api.parse(open(o.header, encoding="utf-8").read(),
                           fluxus_api.read_version_map(o.map))
    found = check(api)
    if o.lib:
        found += check_free_null(api, o.lib)
    found = sorted(set(found))
    pending = []
    if os.path.exists(o.pending):
        for line in open(o.pending, encoding="utf-8"):
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                pending.append(line)
    if o.write_pending:
        new = [x for x in found if x not in pending]
        if new:
            print("refusing to add new violations to the pending list:")
            for x in new:
                print("  " + x)
            return 1
        header = [l for l in open(o.pending, encoding="utf-8") if l.startswith("#")]
        with open(o.pending, "w", encoding="utf-8") as out:
            out.writelines(header)
            for x in found:
                out.write(x + "\n")
        print("%s: %d violations pending" % (o.pending, len(found)))
        return 0
    new = [x for x in found if x not in pending]
    # Without --lib the free-null rule was not checked: its lines are neither new nor fixed.
    fixed = [x for x in pending
             if x not in found and (o.lib or not x.startswith("free-null:"))]
    rules = {}
    for x in found:
        r = x.split(":", 1)[0]
        rules[r] = rules.get(r, 0) + 1
    print("conventions: %d functions, %d callback types, %d constants checked; %d violations "
          "pending (%s)" % (len(api["functions"]), len(api["callbacks"]),
                            len(api["constants"]), len(found),
                            ", ".join("%s %d" % kv for kv in sorted(rules.items())) or "none"))
    if new:
        print("NEW violations of the header's conventions (docs/design/contract-1.0.md):")
        for x in new:
            print("  " + x)
    if fixed:
        print("Fixed, so delete these lines from %s (or run with --write-pending):" % o.pending)
        for x in fixed:
            print("  " + x)
    return 1 if new or fixed else 0


if __name__ == "__main__":
    sys.exit(main())
