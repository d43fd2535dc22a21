#!/usr/bin/env bash
# Type-check the Metal build (`--features metal`) for aarch64-apple-darwin from Linux, so the
# macOS path (device opening, the Metal free-memory query) keeps compiling without a Mac.
# `cargo check` links nothing: C sources of dependencies (ring's, for hf-hub's TLS) go through a
# stand-in compiler that writes empty objects, since no Apple toolchain exists here.
#
#   .ci/metal-check.sh [extra cargo args]
#
# Needs the aarch64-apple-darwin standard library (`rustup target add`, done here when missing);
# if rustup cannot fetch it, the check is skipped with a notice.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=aarch64-apple-darwin
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    if ! rustup target add "$target" >&2; then
        echo "metal-check: skipped (rustup could not add the $target standard library)" >&2
        exit 0
    fi
fi
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cat > "$stub/cc" <<'CC'
#!/usr/bin/env bash
out=""
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && { out="$2"; shift; }; shift; done
[ -n "$out" ] && : > "$out"
exit 0
CC
cat > "$stub/ar" <<'AR'
#!/usr/bin/env bash
for a in "$@"; do case "$a" in *.a) : > "$a" ;; esac; done
exit 0
AR
chmod +x "$stub/cc" "$stub/ar"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/metal-check}"
# target-cpu=native (.cargo/config.toml) means the host's x86 CPU; name an Apple one instead.
export CARGO_TARGET_AARCH64_APPLE_DARWIN_RUSTFLAGS="-C target-cpu=apple-m1"
export CC_aarch64_apple_darwin="$stub/cc" AR_aarch64_apple_darwin="$stub/ar"
start=$(date +%s)
cargo check --features metal --target "$target" --lib --bins "$@"
echo "metal-check: ok in $(( $(date +%s) - start ))s" >&2
