#!/usr/bin/env bash
# Builds virtiofsd-dax: virtiofsd 1.14.0 from crates.io with the patches of this directory
# applied (with patch, or git apply where patch is missing), built with --locked against the
# Cargo.lock the patches carry, installed as DEST/virtiofsd-dax.
#
#   bash peers/virtiofsd-dax/build.sh DEST
#
# The .crate comes from cargo's registry cache when cargo already fetched it, else from
# static.crates.io; either way its sha256 must be the one below (crates.io's checksum of
# virtiofsd 1.14.0). The build is skipped when DEST/virtiofsd-dax was built from the same
# patches and this script (a stamp file beside it records their hash). Needs libseccomp-dev
# and libcap-ng-dev (virtiofsd's own build dependencies).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:?usage: build.sh DEST}
version=1.14.0
sha256=7051accc9cf2816e25945c8216e6d4be2b4e75fc5e77559cd7eed5e400245cc1

stamp=$(cat "$here/build.sh" "$here"/patches/*.patch | sha256sum | cut -d' ' -f1)
if [ -x "$dest/virtiofsd-dax" ] && [ "$(cat "$dest/virtiofsd-dax.stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi

work=${VIRTIOFSD_DAX_BUILD_DIR:-$dest/../src/virtiofsd-dax}
mkdir -p "$work" "$dest"
crate="$work/virtiofsd-$version.crate"
if [ ! -f "$crate" ] || ! echo "$sha256  $crate" | sha256sum -c --quiet 2>/dev/null; then
    cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/virtiofsd-$version.crate 2>/dev/null | head -1 || true)
    if [ -n "$cached" ]; then
        cp "$cached" "$crate"
    else
        curl -sSfL -o "$crate" "https://static.crates.io/crates/virtiofsd/virtiofsd-$version.crate"
    fi
fi
echo "$sha256  $crate" | sha256sum -c --quiet

# A fresh source tree each time; the target directory beside it is kept between builds.
rm -rf "$work/virtiofsd-$version"
tar -xzf "$crate" -C "$work"
for p in "$here"/patches/*.patch; do
    # patch(1) where installed, else git's own (git apply works outside a repository too).
    if command -v patch >/dev/null; then
        patch -s -p1 -d "$work/virtiofsd-$version" <"$p"
    else
        (cd "$work/virtiofsd-$version" && git apply "$p")
    fi
done
CARGO_TARGET_DIR="$work/target" cargo build --release --locked \
    --manifest-path "$work/virtiofsd-$version/Cargo.toml"
install -m 0755 "$work/target/release/virtiofsd" "$dest/virtiofsd-dax"
echo "$stamp" >"$dest/virtiofsd-dax.stamp"
