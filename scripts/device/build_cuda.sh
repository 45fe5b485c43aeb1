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
#
# Its CUDA backend multiplies in float32 unless CEPA_CUDA_TF32=1 is set when it runs (below).
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
# Float32 matrix products unless TF32 is asked for (issue 15: CUDA within 1e-4 of the CPU).
# CubeCL 0.11.3 declares TF32 on every GPU of compute capability 8.0 or more, and its matmul and
# convolution kernels then promote float32 operands to TF32 for the tensor cores (cubek-matmul's
# `adjust_dtypes`), with no setting to refuse it. A copy of cubecl-cuda, patched so that it
# declares TF32 only when CEPA_CUDA_TF32=1 at run time, replaces the registry's for this build
# (a `[patch]` given on the command line; Cargo.lock is restored afterwards). Without TF32 the
# kernels fall back to their float32 (unit) variants. The binary says which in every report's
# `device` (CEPA_CUDA_TF32_SWITCH marks it).
PATCHED=$PWD/target/cuda/patched/cubecl-cuda-0.11.3
MARK="cepa, scripts/device/build_cuda.sh"
# Made once and left alone after: a fresh copy would rebuild all of CubeCL and burn every time.
if ! grep -q "$MARK" "$PATCHED/src/runtime.rs" 2>/dev/null; then
rm -rf "$PATCHED" && mkdir -p "$(dirname "$PATCHED")"
cp -r "$REG"cubecl-cuda-0.11.3 "$PATCHED" && chmod -R u+w "$PATCHED"
python3 - "$PATCHED/src/runtime.rs" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
old = """            device_props
                .register_type_usage(ElemType::Float(FloatKind::TF32), TypeUsage::Conversion);"""
new = """            // cepa, scripts/device/build_cuda.sh: TF32 only on request.
            if std::env::var_os("CEPA_CUDA_TF32").is_some_and(|v| v == "1") {
                device_props
                    .register_type_usage(ElemType::Float(FloatKind::TF32), TypeUsage::Conversion);
            }"""
if text.count(old) != 1:
    sys.exit(f"{path}: CubeCL's TF32 declaration was not found once; update build_cuda.sh")
open(path, "w").write(text.replace(old, new))
PY
fi
cp Cargo.lock target/cuda/Cargo.lock.orig
trap 'cp target/cuda/Cargo.lock.orig Cargo.lock' EXIT
export DOCS_RS=1 CARGO_TARGET_DIR=target/cuda CEPA_CUDA_TF32_SWITCH=1
export RUSTFLAGS="-C link-arg=$STUB/llvm_stub.o"
cargo build --release -p cepa-cli --features cuda \
  --config "patch.crates-io.cubecl-cuda.path=\"$PATCHED\""
strip -o target/cepa-cuda target/cuda/release/cepa
mkdir -p .dev && xz -T0 -6 -c target/cepa-cuda > .dev/cepa-cuda.xz
ls -la target/cepa-cuda .dev/cepa-cuda.xz
