#!/usr/bin/env bash
# Puts the upstream sources of libuv, xxHash and cmocka, as Debian 12 ships them, where the
# wraps in subprojects/ expect them (subprojects/packagefiles/*.orig.tar.*), for the Windows
# cross build (tools/toolchains/x86_64-w64-mingw32.ini). Meson cannot download them: no
# upstream site is reachable from the machines that build fluxus, Debian's archive is.
# Needs root (or sudo) to enable a deb-src entry once, mirroring the existing deb entries.
set -euo pipefail

cd "$(dirname "$0")/../subprojects/packagefiles"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

# The tarballs each wrap names (source_filename); nothing to do if all are here.
wanted=()
for wrap in ../libuv.wrap ../xxhash.wrap ../cmocka.wrap; do
    wanted+=("$(sed -n 's/^source_filename = //p' "$wrap")")
done
missing=0
for f in "${wanted[@]}"; do
    [ -f "$f" ] || missing=1
done
[ "$missing" -eq 0 ] && exit 0

# A deb-src entry for the same archive and suites as the deb entries (deb822 or one-line
# format), unless one is enabled already.
if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
            "${SUDO[@]}" tee /etc/apt/sources.list.d/fluxus-deb-src.sources >/dev/null
    else
        sed -n 's/^deb /deb-src /p' /etc/apt/sources.list |
            "${SUDO[@]}" tee /etc/apt/sources.list.d/fluxus-deb-src.list >/dev/null
    fi
    "${SUDO[@]}" apt-get update
fi

# --download-only: the .orig tarball, Debian's patches and the .dsc; Meson unpacks the tarball
# itself and checks it against the wrap's source_hash.
apt-get source --download-only libuv1 xxhash cmocka
for f in "${wanted[@]}"; do
    if [ ! -f "$f" ]; then
        echo "fetch_subprojects: $f not in Debian's source packages (see subprojects/*.wrap)" >&2
        exit 1
    fi
done
