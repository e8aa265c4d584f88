#!/usr/bin/env bash
# Benchmarks MariaDB failover through the release agents: three servers on 127.0.0.1 (a
# primary and two replicas, each with its own agent over HTTPS with mutual TLS); the
# primary's server and agent are SIGKILLed and the clock runs until the most advanced replica
# is promoted and writable and the other replica is re-pointed to it. Prints a table and
# writes bench/failover.json. Extra arguments go to the binary (--runs N, --rows N, --out FILE).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash tools/setup.sh
cargo build --release -p guest-agent
cargo run --release -p guest-agent-e2e --bin bench-failover -- --agent target/release/guest-agent "$@"
