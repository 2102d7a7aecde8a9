#!/usr/bin/env python3
"""migrate_0_4.py — rewrite call sites from the 0.3 API to the 0.4 conventions (issue 14).

The 0.4 header renames functions and moves every out-parameter first (see
docs/design/contract-1.0.md, section 1). This script rewrites calls, definitions and
prototypes of the changed functions in C, C++ and Python (ctypes) sources:

    tools/migrate_0_4.py FILE...        rewrite the files in place, print what changed
    tools/migrate_0_4.py --check FILE...  exit 1 if a file still uses a 0.3 name
    tools/migrate_0_4.py --only=NAME,... FILE...  rewrite only these functions

Run it once per tree: a function that keeps its name but moves its out-parameter first would be
rewritten again by a second run.

It rewrites only what is mechanical: a new name and a new argument order. Calls whose result
changed shape (a sentinel reader that became `_get_*(out, ...)`) are listed by --check and
must be edited by hand. It parses argument lists with balanced brackets, strings and
comments, and keeps each argument's text and the separators' layout.
"""
import re
import sys

# old name -> (new name, new order as indices into the old argument list)
RULES = {
    "fluxus_runtime_get_workers": ("fluxus_runtime_get_workers", [1, 0]),
    "fluxus_runtime_run_once": ("fluxus_runtime_run_once", [1, 0]),
    "fluxus_pipeline_push_many": ("fluxus_pipeline_push_many", [4, 0, 1, 2, 3]),
    "fluxus_emit": ("fluxus_emitter_emit", [0, 1]),
    "fluxus_async_complete": ("fluxus_pipeline_complete_async", [0, 1, 2, 3]),
    "fluxus_async_fail": ("fluxus_pipeline_fail_async", [0, 1, 2, 3, 4]),
    "fluxus_stage_add_route": ("fluxus_stage_add_route", [3, 0, 1, 2]),
    "fluxus_stage_route_index": ("fluxus_stage_get_route_index", [3, 0, 1, 2]),
    "fluxus_pipeline_get_failure": ("fluxus_pipeline_get_failure", [1, 0]),
    "fluxus_concurrency_limiter_in_use": ("fluxus_concurrency_limiter_get_in_use", [1, 0]),
    "fluxus_pipeline_get_stats": ("fluxus_pipeline_get_stats", [1, 0]),
    "fluxus_stage_get_stats": ("fluxus_stage_get_stats", [2, 0, 1]),
    "fluxus_pipeline_stage_count": ("fluxus_pipeline_get_stage_count", [1, 0]),
    "fluxus_pipeline_get_state": ("fluxus_pipeline_get_state", [1, 0]),
    "fluxus_pipeline_get_committed_cursor": ("fluxus_pipeline_get_committed_cursor", [1, 0]),
    "fluxus_circuit_breaker_get_state": ("fluxus_circuit_breaker_get_state", [1, 0]),
    "fluxus_circuit_breaker_allow": ("fluxus_circuit_breaker_allow", [1, 0]),
}

# Renamed with a changed result: rewritten by hand (--check lists them).
BY_HAND = {
    "fluxus_current_worker": "fluxus_call_get_worker(&out)",
    "fluxus_stage_name": "fluxus_stage_get_name(&out, p, stage)",
    "fluxus_failure_stage_name": "fluxus_failure_get_stage_name(&out, f)",
    "fluxus_failure_stage_index": "fluxus_failure_get_stage_index(&out, f)",
    "fluxus_failure_status": "fluxus_failure_get_status(&out, f)",
    "fluxus_failure_message": "fluxus_failure_get_message(&out, f)",
    "fluxus_failure_attempts": "fluxus_failure_get_attempts(&out, f)",
    "fluxus_failure_description": "fluxus_failure_get_description(&out, f)",
    "fluxus_failure_retries_exhausted": "fluxus_failure_get_retries_exhausted(&out, f)",
}

CALL = re.compile(r"\b(fluxus_[a-z0-9_]+)(\s*)\(")


def skip_literal(s, i):
    """Index just past the string or character literal starting at s[i]."""
    q = s[i]
    i += 1
    while i < len(s) and s[i] != q:
        i += 2 if s[i] == "\\" else 1
    return i + 1


def split_args(s, open_at):
    """Split the argument list whose '(' is at s[open_at]. Returns (parts, seps, close_at):
    the arguments' texts (stripped), the separators between them (with their whitespace,
    including the text before the first and after the last argument), and the ')' index."""
    depth = 0
    i = open_at + 1
    start = i
    raw = []
    while i < len(s):
        c = s[i]
        if c in "\"'":
            i = skip_literal(s, i)
            continue
        if s.startswith("//", i) or (c == "#" and s.startswith("# ", i)):
            i = s.find("\n", i)
            continue
        if s.startswith("/*", i):
            i = s.find("*/", i) + 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                raw.append(s[start:i])
                break
            depth -= 1
        elif c == "," and depth == 0:
            raw.append(s[start:i])
            start = i + 1
        i += 1
    else:
        return None
    parts, lead, trail = [], [], []
    for r in raw:
        core = r.strip()
        parts.append(core)
        lead.append(r[: len(r) - len(r.lstrip())])
        trail.append(r[len(r.rstrip()):])
    return parts, lead, trail, i


def rewrite(text):
    out = []
    pos = 0
    changes = 0
    for m in CALL.finditer(text):
        name = m.group(1)
        if name not in RULES or m.start() < pos:
            continue
        new_name, order = RULES[name]
        sp = split_args(text, m.end() - 1)
        if sp is None:
            continue
        parts, lead, trail, close = sp
        if len(parts) != len(order):
            # not a call of this function (a macro, a comment naming it, a wrapper)
            continue
        moved = [parts[k] for k in order]
        args = "".join(lead[k] + moved[k] + trail[k] + ("," if k + 1 < len(order) else "")
                       for k in range(len(order)))
        out.append(text[pos:m.start()])
        out.append(new_name + m.group(2) + "(" + args + ")")
        pos = close + 1
        if new_name != name or order != sorted(order):
            changes += 1
    out.append(text[pos:])
    return "".join(out), changes


def main(argv):
    check = "--check" in argv
    only = [a.split("=", 1)[1].split(",") for a in argv if a.startswith("--only=")]
    if only:  # rewrite just these functions (a tree converted in steps)
        for name in list(RULES):
            if name not in only[0]:
                del RULES[name]
    files = [a for a in argv if not a.startswith("--")]
    left = 0
    for f in files:
        text = open(f, encoding="utf-8").read()
        if check:
            for name in list(BY_HAND) + [n for n, (nn, o) in RULES.items() if nn != n]:
                for m in re.finditer(r"\b%s\b" % name, text):
                    line = text.count("\n", 0, m.start()) + 1
                    print("%s:%d: %s" % (f, line, name))
                    left += 1
            continue
        new, n = rewrite(text)
        if n:
            open(f, "w", encoding="utf-8").write(new)
            print("%s: %d call(s) rewritten" % (f, n))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
