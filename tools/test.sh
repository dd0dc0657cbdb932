#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests that drive the
# real binary on real disk images, then the integration tests again against a real S3
# server (s3s-fs on loopback, one per test). Usage: tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/sbin:/usr/sbin:$HOME/.cargo/bin"
tools/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
  echo "== the integration tests again, on S3 (s3s-fs)"
  CAIRN_TEST_BACKEND=s3 cargo nextest run --no-fail-fast -E 'kind(test)'
else
  cargo test --no-fail-fast
  CAIRN_TEST_BACKEND=s3 cargo test --no-fail-fast --tests
fi
