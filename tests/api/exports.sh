#!/bin/sh
# Fails unless the shared library exports only fluxus_* symbols (plus _init/_fini and the version
# nodes FLUXUS_0 and FLUXUS_EXPERIMENTAL_0), and unless every function declared FLUXUS_API in the header is exported.
# Usage: exports.sh <path to libfluxus.so> [<path to fluxus.h>]
set -eu

lib="$1"
header="${2:-}"

if [ ! -f "$lib" ]; then
    echo "exports.sh: no such library: $lib" >&2
    exit 2
fi

# "nm -D" prints "ADDRESS TYPE NAME" (NAME may carry "@@FLUXUS_0" or "@FLUXUS_0").
symbols=$(nm -D --defined-only "$lib" | awk 'NF >= 3 { print $3 }' | sed 's/@.*$//' | sort -u)

if [ -z "$symbols" ]; then
    echo "exports.sh: $lib defines no dynamic symbols" >&2
    exit 1
fi

bad=$(printf '%s\n' "$symbols" | grep -v -E '^(fluxus_[A-Za-z0-9_]+|_init|_fini|FLUXUS_0|FLUXUS_EXPERIMENTAL_0)$' || true)
if [ -n "$bad" ]; then
    echo "exports.sh: symbols outside the fluxus_ namespace are exported:" >&2
    printf '%s\n' "$bad" | head -n 20 | sed 's/^/  /' >&2
    echo "  ($(printf '%s\n' "$bad" | wc -l) in all)" >&2
    exit 1
fi

count=$(printf '%s\n' "$symbols" | grep -c '^fluxus_' || true)
echo "exports.sh: $count fluxus_* symbols, nothing else"

if [ -n "$header" ]; then
    # Every "FLUXUS_API <type> fluxus_name(" declaration in the header must be exported.
    declared=$(tr '\n' ' ' < "$header" | grep -o 'FLUXUS_API[^(;]*(' |
               grep -o 'fluxus_[A-Za-z0-9_]*[[:space:]]*($' | sed 's/[[:space:]]*($//' | sort -u)
    missing=""
    for name in $declared; do
        if ! printf '%s\n' "$symbols" | grep -q -x "$name"; then
            missing="$missing $name"
        fi
    done
    if [ -n "$missing" ]; then
        echo "exports.sh: declared in the header but not exported:$missing" >&2
        exit 1
    fi
    echo "exports.sh: all $(printf '%s\n' $declared | wc -l) declared functions are exported"
fi
exit 0
