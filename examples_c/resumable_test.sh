#!/bin/sh
# Runs examples_c/resumable twice: first killed midway (--stop-after), then to the end, and
# checks the resume: exit codes, the state file, and that the records stored or dead-lettered
# by both runs cover all 1000 records, those before the first run's committed cursor exactly
# once. Usage: resumable_test.sh <path to resumable>
set -eu

# In a cross build Meson runs tests through an emulator and passes it in MESON_EXE_WRAPPER.
exe="$1"
wrapper=${MESON_EXE_WRAPPER:-}
records=1000
per_page=20
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT INT TERM
state="$dir/state"
dead="$dir/dead-letters"
log="$dir/delivered"

fail() {
    echo "resumable_test: $*" >&2
    exit 1
}

set +e
$wrapper "$exe" "$state" "$dead" --stop-after 300 --delivered-log "$log"
rc=$?
set -e
[ "$rc" -eq 3 ] || fail "first run exited with $rc, expected 3 (simulated crash)"
[ -f "$state" ] || fail "first run left no state file"
c1=$(cat "$state")
case "$c1" in '' | *[!0-9]*) fail "state file holds '$c1', not a cursor" ;; esac
[ "$c1" -gt 0 ] && [ "$c1" -lt 50 ] || fail "committed cursor after the crash is $c1, expected 1..49"
echo "--- first run committed cursor $c1; resuming"

$wrapper "$exe" "$state" "$dead" --delivered-log "$log" || fail "second run exited with $?, expected 0"
[ "$(cat "$state")" = 50 ] || fail "state after the second run is $(cat "$state"), expected 50"

# Count each record id over both runs' stored and dead-lettered records.
awk -v records="$records" -v first="$((c1 * per_page))" '
    { n[$1]++ }
    END {
        bad = 0
        for (i = 0; i < records; i++) {
            if (i < first && n[i] != 1) {
                printf "record %d (before the committed cursor) ended %d times, expected once\n", i, n[i]
                bad++
            } else if (n[i] < 1) {
                printf "record %d was lost\n", i
                bad++
            }
            if (bad > 20) break
        }
        exit bad != 0
    }' "$log" "$dead" || fail "records lost or repeated (see above)"
echo "--- all $records records stored or dead-lettered; none before cursor $c1 twice"
