#!/usr/bin/env bash
# Type-checks and lints the `metal` feature on a machine that is not a Mac.
#
# objc2 and block2 refuse non-Apple targets unless told to use GNUstep, and objc2-metal links
# the Metal framework, which only Apple targets have. This script copies the crate's (tracked and unignored)
# files to a scratch directory, adds the GNUstep features of objc2/block2 there and patches a
# copy of objc2-metal without its framework link attribute, then runs
# `cargo clippy --features metal --all-targets -D warnings`. Nothing is linked or run: this checks
# the Rust of the Metal backend (src/fused/metal.rs) against candle 0.11.1's real Metal API.
# The committed crate is untouched. Usage: scripts/check-metal.sh [scratch dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-${TMPDIR:-/tmp}/candle-adex-metal-check}
rm -rf "$scratch"
mkdir -p "$scratch"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - ) | tar -xf - -C "$scratch"
cd "$scratch"
cargo fetch --quiet
registry=$(dirname "$(cargo metadata --format-version 1 --features metal 2>/dev/null \
    | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="objc2-metal"))')")
mkdir -p patched
cp -r "$registry" patched/objc2-metal
sed -i 's/^#\[link(name = "Metal", kind = "framework")\]$//' patched/objc2-metal/src/generated/mod.rs
grep -q 'kind = "framework"' patched/objc2-metal/src/generated/mod.rs && {
    echo "check-metal: could not remove objc2-metal's framework link" >&2; exit 1; }
python3 - <<'PY'
s = open("Cargo.toml").read()
s = s.replace("[dependencies]\n", "[dependencies]\n"
              "objc2 = { version = \"0.6\", features = [\"gnustep-2-1\"] }\n"
              "block2 = { version = \"0.6\", features = [\"gnustep-2-1\"] }\n", 1)
s += "\n[patch.crates-io]\nobjc2-metal = { path = \"patched/objc2-metal\" }\n"
open("Cargo.toml", "w").write(s)
PY
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/metal-check} \
    cargo clippy --features metal --all-targets -- -D warnings
echo "check-metal: the metal feature type-checks and is clippy-clean (not linked, not run)"
