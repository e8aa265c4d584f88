#!/usr/bin/env bash
# Benchmarks PostgreSQL replication through the release agents, all on 127.0.0.1: time from
# promote_to_replica_source to the first committed write on the new primary, and time to
# attach a replica of a ~1 GB database (pgbench -i -s 70) against seeding one by hand with
# pg_basebackup in the same run. Prints a table and writes bench/pg-replication.json.
# Extra arguments go to the binary (--runs N, --attach-runs N, --scale N, --out FILE).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash tools/setup.sh
cargo build --release -p guest-agent
cargo run --release -p guest-agent-e2e --bin bench-pg-replication -- --agent target/release/guest-agent "$@"
