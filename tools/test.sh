#!/usr/bin/env bash
# The test command: install system packages, then lint and run the whole suite in
# release (the project's single build profile, shared with the main job).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo fmt --all -- --check
# The SIGKILL tests need the crash-injection hook (and fail without it).
cargo clippy --release --all-targets --features crash-hook --quiet -- -D warnings
cargo test --release --features crash-hook
