#!/usr/bin/env bash
# Benchmarks backups through the release agent, all on 127.0.0.1 against the Swift all-in-one's
# S3 API: create_backup of a ~1 GB PostgreSQL (pgbench -i -s 70) and a ~1 GB MariaDB against
# the same tool piped through `zstd -3 -T2` into `aws s3 cp -`, the agent's peak RSS (also for
# databases ten times smaller), and a restore into a fresh instance. Prints a table and writes
# bench/backup.json. Extra arguments go to the binary (--runs N, --pg-scale N, --maria-rows N,
# --out FILE).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash tools/setup.sh
for tool in zstd aws; do
    if ! command -v "$tool" >/dev/null; then
        case $tool in
        zstd) apt-get install -y zstd ;;
        aws) python3 -m pip install --quiet awscli ;;
        esac
    fi
    command -v "$tool" >/dev/null || { echo "bench-backup: $tool is missing" >&2; exit 1; }
done
bash tools/swift.sh start
# shellcheck disable=SC1090
source <(bash tools/swift.sh env)
export AWS_ACCESS_KEY_ID=${GA_S3_ACCESS_KEY:-test:tester}
export AWS_SECRET_ACCESS_KEY=${GA_S3_SECRET_KEY:-testing}
export AWS_DEFAULT_REGION=${GA_S3_REGION:-us-east-1}
# Swift's s3api does not take the newer default checksum trailers.
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
cargo build --release -p guest-agent
cargo run --release -p guest-agent-e2e --bin bench-backup -- --agent target/release/guest-agent "$@"
