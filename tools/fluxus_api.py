#!/usr/bin/env python3
"""fluxus_api.py — the machine-readable description of include/fluxus.h.

Reads the public header (the one source of truth) and writes include/fluxus-api.json: every
function with its parameters (type, name, direction, duration unit), return type, documented
return codes, thread-safety line, tier and "since"; every callback type; every opaque handle;
every constant with its group; every struct with its fields. Bindings are generated from it or
checked against it; tests/contract/test_conventions.py checks the header's conventions on it.

    tools/fluxus_api.py [--header include/fluxus.h] [--map src/fluxus.map] [--out FILE | --check FILE]

--check FILE exits 1 (printing a diff summary) when FILE is not what the header gives now:
the checked-in description must be regenerated in the commit that changes the header.

The header is our own and regular, so a small parser does: declarations are
"FLUXUS_API <type> <name>(<params>);", callback types "typedef <type> (*<name>)(<params>);",
each documented by the /** ... */ block before it (a block documents every declaration up to
the next block).
"""
import argparse
import json
import re
import sys

DURATION_WORDS = ("timeout", "delay", "interval", "ttl", "budget", "period", "spin", "threshold",
                  "reset", "window", "age", "after", "size_us", "step_us", "delta", "deadline",
                  "now", "start")
UNIT_SUFFIXES = ("_us", "_ms", "_ns")


def join_continued_lines(text):
    """Joins continued lines (a #define spread over several)."""
    return text.replace("\\\n", " ")


def split_params(params):
    params = params.strip()
    if params in ("", "void"):
        return []
    out = []
    depth = 0
    cur = ""
    for ch in params:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [p.strip() for p in out]


def parse_param(p):
    """'const uint64_t *items' -> {'type': 'const uint64_t *', 'name': 'items'}."""
    m = re.match(r"^(.*?)([A-Za-z_][A-Za-z0-9_]*)\s*(\[\s*\])?$", p)
    if not m:
        return {"type": p, "name": ""}
    typ = re.sub(r"\s+", " ", m.group(1)).strip()
    typ = typ.replace(" *", "*").replace("*", " *").replace("*  *", "**").strip()
    typ = re.sub(r"\s+\*", " *", typ)
    typ = typ.replace("* *", "**")
    if m.group(3):
        typ += " []"
    return {"type": typ, "name": m.group(2)}


def unit_of(name):
    for s in UNIT_SUFFIXES:
        if name.endswith(s) or s + "_" in name:
            return s[1:]
    return None


def doc_fields(doc):
    """Structured bits of a doc block: @param[out] names, @return codes, Thread safety."""
    out_params = set(re.findall(r"@param\[out\]\s+([A-Za-z_][A-Za-z0-9_]*)", doc))
    ret = None
    m = re.search(r"@return\s+(.*?)(?:\n\s*\n|\n\s*Thread safety:|\n\s*@|$)", doc, re.S)
    if m:
        ret = " ".join(m.group(1).split())
    codes = sorted(set(re.findall(r"\bFLUXUS_(?:E[A-Z]+|OK)\b", ret or "")))
    ts = None
    m = re.search(r"Thread safety:\s*(.*?)(?:\n\s*\n|$)", doc, re.S)
    if m:
        ts = " ".join(m.group(1).split())
    since = None
    m = re.search(r"@since\s+([0-9]+\.[0-9]+)", doc)
    if m:
        since = m.group(1)
    return out_params, ret, codes, ts, since


def clean_doc(raw):
    lines = []
    for line in raw.splitlines():
        line = line.strip()
        line = re.sub(r"^/\*\*?", "", line)
        line = re.sub(r"\*/$", "", line)
        line = re.sub(r"^\*\s?", "", line)
        lines.append(line.rstrip())
    return "\n".join(lines).strip()


def read_version_map(path):
    """Version nodes of the linker script: {node: [patterns]} (global patterns only)."""
    nodes = {}
    try:
        text = open(path, encoding="utf-8").read()
    except OSError:
        return nodes
    text = re.sub(r"#[^\n]*", "", text)
    for m in re.finditer(r"([A-Za-z0-9_.]+)\s*\{(.*?)\}\s*[A-Za-z0-9_.]*\s*;", text, re.S):
        body = m.group(2)
        g = re.search(r"global:(.*?)(?:local:|$)", body, re.S)
        pats = re.findall(r"([A-Za-z0-9_*]+)\s*;", g.group(1)) if g else []
        nodes[m.group(1)] = pats
    return nodes


def node_of(name, nodes):
    """The version node whose global patterns name `name` most specifically (exact beats glob)."""
    best = None
    for node, pats in nodes.items():
        for p in pats:
            if p == name:
                return node
            if "*" in p and re.fullmatch(p.replace("*", ".*"), name):
                best = best or node
    return best


def parse(header_text, nodes):
    text = join_continued_lines(header_text)
    # Tokens in order: doc blocks, declarations, callback typedefs, handles, defines, structs,
    # and #ifdef FLUXUS_EXPERIMENTAL regions.
    pat = re.compile(
        r"(?P<doc>/\*\*.*?\*/)"
        r"|(?P<comment>/\*.*?\*/)"
        r"|(?P<func>FLUXUS_API\s+(?P<fret>[^;(]*?)\b(?P<fname>fluxus_[A-Za-z0-9_]+)\s*\((?P<fparams>[^;]*?)\)\s*;)"
        r"|(?P<cb>typedef\s+(?P<cret>[^;(]*?)\(\s*\*\s*(?P<cname>fluxus_[A-Za-z0-9_]+)\s*\)\s*\((?P<cparams>[^;]*?)\)\s*;)"
        r"|(?P<struct>typedef\s+struct\s+(?P<sname>fluxus_[A-Za-z0-9_]+)\s*\{(?P<sbody>.*?)\}\s*(?P=sname)\s*;)"
        r"|(?P<handle>typedef\s+struct\s+(?P<hname>fluxus_[A-Za-z0-9_]+)\s+(?P=hname)\s*;)"
        r"|(?P<define>^\#define[ \t]+(?P<dname>FLUXUS_[A-Z0-9_]+)[ \t]+(?P<dval>[^\n/]*?)[ \t]*(?:/\*.*?\*/)?[ \t]*$)"
        r"|(?P<ifexp>^\#if(?:def)?[ \t]+[^\n]*FLUXUS_EXPERIMENTAL[^\n]*$)"
        r"|(?P<endif>^\#endif[^\n]*$)"
        r"|(?P<ifany>^\#if[^\n]*$)"
        r"|(?P<blank>\n\s*\n)",
        re.S | re.M)
    api = {"functions": [], "callbacks": [], "handles": [], "constants": [], "structs": []}
    doc = ""
    doc_used = False
    if_stack = []
    group = None
    blocks = []   # runs of #defines with nothing between them: the constant groups
    block = None
    for m in pat.finditer(text):
        kind = m.lastgroup
        if kind != "define":
            block = None
        if kind == "doc":
            doc = clean_doc(m.group("doc"))
            doc_used = False
            continue
        if kind == "ifexp":
            if_stack.append(True)
            continue
        if kind == "ifany":
            if_stack.append(False)
            continue
        if kind == "endif":
            if if_stack:
                if_stack.pop()
            continue
        if kind == "blank":
            continue
        experimental = any(if_stack)
        if kind == "func":
            out_params, ret, codes, ts, since = doc_fields(doc)
            params = [parse_param(p) for p in split_params(m.group("fparams"))]
            for p in params:
                p["out"] = p["name"] in out_params or p["name"] == "out" or \
                    p["name"].startswith("out_")
                u = unit_of(p["name"])
                if u:
                    p["unit"] = u
            name = m.group("fname")
            node = node_of(name, nodes)
            api["functions"].append({
                "name": name,
                "returns": " ".join(m.group("fret").split()),
                "params": params,
                "return_codes": codes,
                "returns_doc": ret,
                "thread_safety": ts,
                "since": since,
                "experimental": experimental,
                "version_node": node,
                "documented": bool(doc),
                "shares_doc": doc_used,
            })
            doc_used = True
        elif kind == "cb":
            params = [parse_param(p) for p in split_params(m.group("cparams"))]
            api["callbacks"].append({
                "name": m.group("cname"),
                "returns": " ".join(m.group("cret").split()),
                "params": params,
                "experimental": experimental,
            })
        elif kind == "handle":
            api["handles"].append({"name": m.group("hname"), "experimental": experimental})
        elif kind == "struct":
            fields = []
            body = re.sub(r"/\*.*?\*/", "", m.group("sbody"), flags=re.S)
            for decl in body.split(";"):
                decl = " ".join(decl.split())
                if decl:
                    fields.append(parse_param(decl))
            api["structs"].append({"name": m.group("sname"), "fields": fields})
        elif kind == "define":
            name, val = m.group("dname"), m.group("dval").strip()
            if name in ("FLUXUS_H", "FLUXUS_API") or not val or val.startswith("__"):
                continue
            if block is None:
                block = []
                blocks.append(block)
            block.append(len(api["constants"]))
            api["constants"].append({"name": name, "value": val, "experimental": experimental})
            continue
        # plain comments change nothing
    # The callback concurrency table ("@callback NAME threads=.. self=.. calls=..").
    rows = {m.group(1): {"threads": m.group(2), "self": m.group(3), "calls": m.group(4)}
            for m in re.finditer(r"@callback\s+(fluxus_\w+)\s+threads=(\w+)\s+self=(\w+)"
                                 r"\s+calls=(\w+)", text)}
    for c in api["callbacks"]:
        if c["name"] in rows:
            c["concurrency"] = rows[c["name"]]
    for b in blocks:
        names = [api["constants"][i]["name"] for i in b]
        group = names[0] if len(names) == 1 else common_prefix(names)
        if group == "FLUXUS_":
            group = "status" if any(n.startswith("FLUXUS_E") for n in names) else group
        for i in b:
            api["constants"][i]["group"] = group
    return api


def common_prefix(names):
    """Longest prefix of all names that ends at an underscore."""
    p = names[0]
    for n in names[1:]:
        while not n.startswith(p):
            p = p[:-1]
    return p[:p.rfind("_") + 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--header", default="include/fluxus.h")
    ap.add_argument("--map", default="src/fluxus.map")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--out")
    g.add_argument("--check")
    o = ap.parse_args()
    api = parse(open(o.header, encoding="utf-8").read(), read_version_map(o.map))
    text = json.dumps(api, indent=1, sort_keys=True) + "\n"
    if o.check:
        try:
            old = open(o.check, encoding="utf-8").read()
        except OSError:
            old = ""
        if old != text:
            print("fluxus_api.py: %s is not what %s gives now; regenerate it with\n"
                  "  tools/fluxus_api.py --out %s" % (o.check, o.header, o.check))
            return 1
        print("fluxus_api.py: %s matches %s (%d functions, %d callback types)"
              % (o.check, o.header, len(api["functions"]), len(api["callbacks"])))
        return 0
    if o.out:
        with open(o.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
