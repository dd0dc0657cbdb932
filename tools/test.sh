#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests that drive the
# real binary on real disk images. Usage: tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/sbin:/usr/sbin"
tools/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
