#!/usr/bin/env python3
"""Fails when a locked dependency declares a newer Rust than this crate's `rust-version`.

Reads `cargo metadata` (the lock, every feature, every platform); needs no other toolchain.
Dependencies that declare no `rust-version` cannot be checked this way (candle's crates declare
none), so the declared version is also the oldest one the crate was seen to build with.
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
root_id = meta["resolve"]["root"]
root = next(p for p in meta["packages"] if p["id"] == root_id)
if not root.get("rust_version"):
    sys.exit(f"{root['name']}: Cargo.toml declares no rust-version")
declared = version(root["rust_version"])
resolved = {node["id"] for node in meta["resolve"]["nodes"]}
newer = sorted(
    (version(p["rust_version"]), p["name"], p["version"])
    for p in meta["packages"]
    if p["id"] in resolved and p["id"] != root_id and p.get("rust_version")
    and version(p["rust_version"]) > declared
)
checked = sum(1 for p in meta["packages"] if p["id"] in resolved and p.get("rust_version"))
if newer:
    for need, name, ver in newer:
        print(f"{name} {ver} needs Rust {'.'.join(map(str, need))}", file=sys.stderr)
    sys.exit(f"rust-version = {root['rust_version']} is older than the locked dependencies need")
print(
    f"rust-version {root['rust_version']}: every one of the {checked} locked packages that "
    f"declares a Rust version builds with it"
)
