#!/usr/bin/env bash
# The test command: install system packages, then lint and run the whole suite in
# release (the project's single build profile, shared with the main job).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo fmt --all -- --check
# Compile-only: the library and binary without ffmpeg (`video` off). Dependencies are
# shared with the builds below, so this recompiles only vssl itself.
cargo build --release --no-default-features --quiet
# The SIGKILL tests need the crash-injection hook (and fail without it).
cargo clippy --release --all-targets --features crash-hook --quiet -- -D warnings
# API docs: broken, private or ambiguous links fail the run.
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --features crash-hook --quiet
cargo test --release --features crash-hook
# The CUDA features compile and link without a GPU: CUDA 13.0 from NVIDIA's PyPI
# wheels (downloaded once into ~/.cache/vssl/cuda-13.0, about 1.8 GB), the unoptimised
# ci-cuda profile (about 10 minutes cold on 2 cores, nvcc's PTX build of candle's
# kernels most of it; seconds when cached). VSSL_SKIP_CUDA_BUILD=1 leaves it out.
if [ "${VSSL_SKIP_CUDA_BUILD:-0}" != 1 ]; then
  # Each build then meets a driver that finds no GPU (a stand-in libcuda.so.1):
  # `auto` falls back to the CPU, `cuda:0` exits 2 naming why.
  for features in cuda cuda,cudnn cuda,nccl; do
    VSSL_CUDA_PROFILE=ci-cuda bash tools/cuda-build.sh "$features" --quiet
    bash tools/cuda-nogpu-check.sh "${CARGO_TARGET_DIR:-target/cuda}/ci-cuda/vssl"
  done
fi
