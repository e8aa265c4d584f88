#!/usr/bin/env bash
# Benchmarks the release agent: startup to first HTTPS /healthz, idle RSS, rpc_ping latency
# over HTTPS with mutual TLS. Prints a table and writes bench/results.json.
# Extra arguments go to the bench binary (--calls N, --starts N, --out FILE).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash tools/setup.sh
cargo build --release -p guest-agent
cargo run --release -p guest-agent-e2e --bin bench -- --agent target/release/guest-agent "$@"
