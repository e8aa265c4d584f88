#!/usr/bin/env bash
# OpenStack Swift all-in-one for the backup tests: one replica, the s3api middleware and
# tempauth, from Debian packages, everything on 127.0.0.1 under one base directory.
#
#   tools/swift.sh start     install what is missing, write configs, start, wait until ready
#   tools/swift.sh stop      stop exactly the processes this script recorded
#   tools/swift.sh status    show what runs
#   tools/swift.sh env       print the environment the tests read (GA_SWIFT_*, GA_S3_*)
#
# Idempotent: `start` on a running instance only re-checks it. Packages are installed only when
# missing (with `apt-get update` first); daemons are never started by the package scripts.
#
# Defaults (the tests use them when the GA_* variables are unset):
#   proxy        http://127.0.0.1:18080  (Swift v1 API, tempauth /auth/v1.0, S3 API path-style)
#   storage      object 16200, container 16201, account 16202, memcached 11311
#   Swift user   test:tester / testing   (account AUTH_test)
#   S3 keys      access "test:tester", secret "testing", region us-east-1
# Overrides: GA_SWIFT_BASE (default /tmp/ga-svc/swift), GA_SWIFT_PROXY_PORT, GA_SWIFT_PORT_BASE
# (object port; container/account follow), GA_SWIFT_MEMCACHED_PORT, GA_SWIFT_PROXY_WORKERS (1).
set -euo pipefail

BASE=${GA_SWIFT_BASE:-/tmp/ga-svc/swift}
PROXY_PORT=${GA_SWIFT_PROXY_PORT:-18080}
PORT_BASE=${GA_SWIFT_PORT_BASE:-16200}
MC_PORT=${GA_SWIFT_MEMCACHED_PORT:-11311}
PROXY_WORKERS=${GA_SWIFT_PROXY_WORKERS:-1}
OBJ_PORT=$PORT_BASE
CONT_PORT=$((PORT_BASE + 1))
ACC_PORT=$((PORT_BASE + 2))
ETC=$BASE/etc
DEV=$BASE/srv/node
RUN=$BASE/run
LOG=$BASE/log
RUNAS=$(id -un)
PACKAGES=(swift swift-proxy swift-object swift-container swift-account memcached curl procps python3)
# Start order; stop goes the other way so the proxy stops taking requests first.
SERVICES=(memcached object container account proxy)

say() { printf 'swift.sh: %s\n' "$*" >&2; }
die() {
    printf 'swift.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

# Whether pid $1 runs. PID 1 here reaps orphans late, so a zombie still answers kill -0:
# the state letter tells.
alive() {
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null || true)
    [[ -n $st && $st != Z* ]]
}

recorded_pid() {
    local f=$RUN/$1.pid pid
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    printf '%s' "$pid"
}

is_running() {
    local pid
    pid=$(recorded_pid "$1") || return 1
    alive "$pid"
}

print_env() {
    cat <<EOF
export GA_SWIFT_AUTH_URL=http://127.0.0.1:$PROXY_PORT/auth/v1.0
export GA_SWIFT_USER=test:tester
export GA_SWIFT_KEY=testing
export GA_S3_ENDPOINT=http://127.0.0.1:$PROXY_PORT
export GA_S3_ACCESS_KEY=test:tester
export GA_S3_SECRET_KEY=testing
export GA_S3_REGION=us-east-1
EOF
}

stop_all() {
    local i s pid
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        s=${SERVICES[i]}
        if pid=$(recorded_pid "$s") && alive "$pid"; then
            say "stopping $s (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                alive "$pid" || break
                sleep 0.1
            done
            if alive "$pid"; then
                say "$s (pid $pid) ignored SIGTERM; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$RUN/$s.pid"
    done
}

status_all() {
    local s rc=0
    for s in "${SERVICES[@]}"; do
        if is_running "$s"; then
            printf '%s: running (pid %s)\n' "$s" "$(recorded_pid "$s")"
        else
            printf '%s: stopped\n' "$s"
            rc=3
        fi
    done
    return $rc
}

installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)
    [[ $status == "install ok installed" ]]
}

install_missing() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]}; run as root"
    say "installing: ${missing[*]}"
    # Package scripts must not start daemons on their default ports and addresses.
    local policy=/usr/sbin/policy-rc.d created=no
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created=yes
    fi
    export DEBIAN_FRONTEND=noninteractive
    local ok=yes
    apt-get update -q -o DPkg::Lock::Timeout=600 </dev/null >/dev/null || ok=no
    if [[ $ok == yes ]]; then
        apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 \
            "${missing[@]}" </dev/null >/dev/null || ok=no
    fi
    [[ $created == yes ]] && rm -f "$policy"
    [[ $ok == yes ]] || die "apt-get install ${missing[*]} failed"
}

port_free() {
    ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

write_configs() {
    cat >"$ETC/swift.conf" <<EOF
[swift-hash]
swift_hash_path_prefix = ga-test-prefix
swift_hash_path_suffix = ga-test-suffix

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
EOF
    local type port extra
    for type in object container account; do
        case $type in
        object) port=$OBJ_PORT extra="" ;;
        container) port=$CONT_PORT extra="allow_versions = true" ;;
        account) port=$ACC_PORT extra="" ;;
        esac
        cat >"$ETC/$type-server.conf" <<EOF
[DEFAULT]
devices = $DEV
mount_check = false
disable_fallocate = true
bind_ip = 127.0.0.1
bind_port = $port
workers = 1
user = $RUNAS
swift_dir = $ETC
recon_cache_path = $BASE/cache
log_level = INFO

[pipeline:main]
pipeline = healthcheck recon $type-server

[app:$type-server]
use = egg:swift#$type
$extra

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:recon]
use = egg:swift#recon
recon_cache_path = $BASE/cache

[$type-replicator]
[$type-auditor]
[$type-updater]
EOF
    done
    cat >"$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PROXY_PORT
workers = $PROXY_WORKERS
user = $RUNAS
swift_dir = $ETC
log_level = INFO

[pipeline:main]
# s3api must come before the auth middleware.
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl s3api tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
allow_account_management = true
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test2_tester2 = testing2 .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MC_PORT

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
# Not Swift's default (1000), so tests can tell the published limit from the fallback.
max_manifest_segments = 1200
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
[filter:symlink]
use = egg:swift#symlink
EOF
}

build_ring() { # $1 type, $2 port
    local rc
    [[ -f $ETC/$1.ring.gz ]] && return 0
    rm -f "$ETC/$1.builder"
    (cd "$ETC" && swift-ring-builder "$1.builder" create 10 1 1 >/dev/null)
    (cd "$ETC" && swift-ring-builder "$1.builder" add "r1z1-127.0.0.1:$2/sdb1" 100 >/dev/null)
    rc=0
    (cd "$ETC" && swift-ring-builder "$1.builder" rebalance >/dev/null) || rc=$?
    # 1 means "rebalanced with warnings" (a single device always warns).
    ((rc <= 1)) || die "swift-ring-builder $1 rebalance failed ($rc)"
}

check_xattrs() {
    /usr/bin/python3 - "$DEV/sdb1" <<'PY' || die "the filesystem under $DEV lacks user xattrs; Swift needs them"
import os, sys, tempfile
fd, p = tempfile.mkstemp(dir=sys.argv[1])
try:
    os.setxattr(p, 'user.ga.test', b'x' * 254)
    assert os.getxattr(p, 'user.ga.test') == b'x' * 254
finally:
    os.close(fd)
    os.unlink(p)
PY
}

# Starts $1 in its own session (Swift's SIGTERM handler signals its whole process group) with
# the command in the rest of the arguments. `setsid cmd &` directly, not `( cd && cmd ) &`, so
# that $! is the server itself.
start_bg() {
    local name=$1
    shift
    if is_running "$name"; then
        return 0
    fi
    setsid "$@" >>"$LOG/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
    say "started $name (pid $!)"
}

wait_http() { # $1 port, $2 path, $3 service name
    for _ in $(seq 1 600); do
        if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1$2" 2>/dev/null; then
            return 0
        fi
        is_running "$3" || die "$3 exited during start; see $LOG/$3.log"
        sleep 0.1
    done
    die "$3 does not answer on 127.0.0.1:$1; see $LOG/$3.log"
}

start_all() {
    install_missing
    mkdir -p "$ETC" "$DEV/sdb1" "$RUN" "$LOG" "$BASE/cache"
    local s port
    for s in "${SERVICES[@]}"; do
        is_running "$s" && continue
        case $s in
        memcached) port=$MC_PORT ;;
        object) port=$OBJ_PORT ;;
        container) port=$CONT_PORT ;;
        account) port=$ACC_PORT ;;
        proxy) port=$PROXY_PORT ;;
        esac
        port_free "$port" || die "port 127.0.0.1:$port (for $s) is taken by another process; set GA_SWIFT_* ports"
    done
    check_xattrs
    write_configs
    build_ring object "$OBJ_PORT"
    build_ring container "$CONT_PORT"
    build_ring account "$ACC_PORT"

    start_bg memcached /usr/bin/memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -m 64 -u "$RUNAS"
    for s in object container account proxy; do
        start_bg "$s" "/usr/bin/swift-$s-server" "$ETC/$s-server.conf" -v
    done
    wait_http "$OBJ_PORT" /healthcheck object
    wait_http "$CONT_PORT" /healthcheck container
    wait_http "$ACC_PORT" /healthcheck account
    wait_http "$PROXY_PORT" /healthcheck proxy
    # The first authentication creates the account; do it now so tests do not pay for it.
    local tries=0
    until curl -fsS -o /dev/null --max-time 10 -H 'X-Auth-User: test:tester' \
        -H 'X-Auth-Key: testing' "http://127.0.0.1:$PROXY_PORT/auth/v1.0"; do
        ((++tries < 50)) || die "tempauth does not answer; see $LOG/proxy.log"
        sleep 0.2
    done
    say "ready: proxy http://127.0.0.1:$PROXY_PORT (data $DEV, logs $LOG); stop with: tools/swift.sh stop"
    print_env
}

case "${1:-start}" in
start) start_all ;;
stop) stop_all ;;
status) status_all ;;
env) print_env ;;
*) die "usage: tools/swift.sh start|stop|status|env" ;;
esac
