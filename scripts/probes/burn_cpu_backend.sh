#!/usr/bin/env bash
# Issue 15, "measure burn's other CPU backend (`cpu`) against `flex`": can burn 0.22.1's `cpu`
# backend (burn-cpu -> cubecl-cpu -> cubecl-llvm -> tracel-llvm-bundler) be built here?
# Builds a scratch crate outside the repository that asks for nothing but the backend's
# compiler bundle, and prints how the build ends. Session 27 (2026-12-06): the bundle's build
# script downloads LLVM/MLIR from github.com, which this machine cannot resolve, so it fails
# (BENCHMARKS.md, "burn's `cpu` backend").
#   bash scripts/probes/burn_cpu_backend.sh [scratch dir]
set -uo pipefail
dir=${1:-$(mktemp -d)}
mkdir -p "$dir/src"
cat >"$dir/Cargo.toml" <<'TOML'
[package]
name = "burn-cpu-probe"
version = "0.1.0"
edition = "2021"
publish = false
[workspace]
[dependencies]
# The version burn-cpu 0.22.1 builds through cubecl-cpu 0.11.3.
tracel-llvm-bundler = "=23.1.0-4"
TOML
echo 'fn main() {}' >"$dir/src/main.rs"
if (cd "$dir" && cargo build -j1 >build.log 2>&1); then
  echo "built: burn's cpu backend can be compiled here; time it against flex (BENCHMARKS.md)"
else
  echo "not built ($dir/build.log):"
  grep -E "^error|Err\` value" "$dir/build.log" | head -3
  exit 1
fi
