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
