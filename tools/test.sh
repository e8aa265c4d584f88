#!/usr/bin/env bash
# The project's test command (also what CI runs): installs the test prerequisites, then runs
# formatting, lints, the dependency guard and every test of the workspace. Any failing step
# fails the whole run; nothing is skipped.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n==> %s\n' "$*" >&2; }
fail() {
    printf '\ntest.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

step "setup (tools/setup.sh)"
bash tools/setup.sh || fail "tools/setup.sh"

step "object storage for the backup tests (tools/swift.sh start)"
bash tools/swift.sh start || fail "tools/swift.sh start: OpenStack Swift (s3api) did not come up"
trap 'bash tools/swift.sh stop >/dev/null 2>&1 || true' EXIT

step "cargo fmt --all --check"
cargo fmt --all --check || fail "formatting (run: cargo fmt --all)"

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || fail "clippy"

step "dependency guard (no openssl-sys, native-tls, aws-lc-sys, libz-sys)"
tree=$(cargo tree --workspace -e normal,build --prefix none) || fail "cargo tree"
banned=$(grep -E '^(openssl-sys|native-tls|aws-lc-sys|libz-sys) ' <<<"$tree" | sort -u || true)
if [[ -n $banned ]]; then
    printf '%s\n' "$banned" >&2
    fail "banned crates in the dependency tree (see above; cargo tree -i NAME shows who pulls them)"
fi
printf 'dependency guard: clean\n' >&2

step "cargo test --workspace"
# The end-to-end tests (crate guest-agent-e2e) drive the agent binary target/debug/guest-agent;
# cargo does not build another package's binaries for a test, so build them first.
cargo build --workspace --bins || fail "building the binaries"
cargo test --workspace || fail "cargo test"

step "all checks passed"
