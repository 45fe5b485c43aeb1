#!/usr/bin/env bash
# A CUDA build of the CLI on a machine that cannot reach github.com (this project's machines).
#
# burn's CUDA backend (CubeCL) holds two kernel compilers: CUDA C++ through NVRTC, and an
# LLVM-to-PTX path whose build script downloads a prebuilt LLVM from github.com
# (tracel-llvm-bundler). The cepa crate's `cuda` feature turns on `cubecl-cuda/cpp`, which makes
# NVRTC the compiler CubeCL uses, so the LLVM path is compiled in but never called. This script
# builds without the bundle: DOCS_RS=1 makes the two LLVM build scripts skip their download and
# link steps, and every LLVM C function the code names (llvm-sys's declarations, and CubeCL's
# three C++ shims) is linked to a stub that aborts with a message saying so; none is called.
# The binary then needs, at run time, the NVIDIA driver and NVRTC (CUDA toolkit), as any CUDA
# build does. Where github.com is reachable, `cargo build --release --features cepa-cli/cuda`
# is the ordinary build.
#
#   bash scripts/device/build_cuda.sh     # -> target/cepa-cuda (stripped) and .dev/cepa-cuda.xz
set -eu
cd "$(dirname "$0")/../.."
cargo fetch --locked
REG=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -1)
SYS=$(ls -d "$REG"llvm-sys-231.* | tail -1)
SHIM=$(ls -d "$REG"cubecl-llvm-0.11.3)
STUB=$PWD/target/cuda/llvm-stub
mkdir -p "$STUB"
{
  echo '#include <stdio.h>'
  echo '#include <stdlib.h>'
  echo 'static void missing(const char *n) { fprintf(stderr, "cepa: %s belongs to CubeCL'"'"'s LLVM backend, left out of this build (NVRTC compiles the kernels)\n", n); abort(); }'
  { grep -rhoE "pub fn LLVM[A-Za-z0-9_]+" "$SYS/src" | sed 's/pub fn //'
    grep -rhoE "fn cubecl_[a-z_]+" "$SHIM/src" | sed 's/fn //'; } | sort -u |
    while read -r s; do echo "void $s(void) { missing(\"$s\"); }"; done
} > "$STUB/llvm_stub.c"
cc -O1 -fPIC -c -o "$STUB/llvm_stub.o" "$STUB/llvm_stub.c"
export DOCS_RS=1 CARGO_TARGET_DIR=target/cuda
export RUSTFLAGS="-C link-arg=$STUB/llvm_stub.o"
cargo build --release -p cepa-cli --features cuda --locked
strip -o target/cepa-cuda target/cuda/release/cepa
mkdir -p .dev && xz -T0 -6 -c target/cepa-cuda > .dev/cepa-cuda.xz
ls -la target/cepa-cuda .dev/cepa-cuda.xz
