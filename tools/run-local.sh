#!/usr/bin/env bash
# Sets up and runs the agent locally on its embedded defaults: PostgreSQL 15 managed by the
# agent on 127.0.0.1:5544 (data under .tmp/local/), the HTTP API in plaintext on
# 127.0.0.1:8780 (plaintext is allowed on loopback only).
#
#   tools/run-local.sh         build, write the config, run the agent in the foreground and,
#                              on the first run, prepare it with a "demo" database and user
#   tools/run-local.sh stop    stop the agent (if running) and the PostgreSQL server
#
# Ctrl-C stops the agent; PostgreSQL keeps running (the next start adopts it) until `stop`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

base=$root/.tmp/local
conf=$base/guest-agent.toml
state_dir=$base/state
data_dir=$base/data
run_dir=$base/run
agent_pidfile=$base/agent.pid
password_file=$base/demo-password
bin=$root/target/release/guest-agent
http_addr=127.0.0.1:8780
url=http://$http_addr
pg_port=5544
pg_bin=/usr/lib/postgresql/15/bin

say() { printf 'run-local: %s\n' "$*" >&2; }
die() {
    printf 'run-local: ERROR: %s\n' "$*" >&2
    exit 1
}

# Whether pid $1 runs (zombies, which PID 1 may reap late, count as gone).
alive() {
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null || true)
    [[ -n $stat && $stat != Z* ]]
}

wait_gone() {
    local pid=$1 tries=$2
    while ((tries-- > 0)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    ! alive "$pid"
}

stop_all() {
    if [[ -f $agent_pidfile ]]; then
        local apid
        apid=$(<"$agent_pidfile")
        if [[ $apid =~ ^[0-9]+$ ]] && alive "$apid"; then
            say "stopping the agent (pid $apid)"
            kill -TERM "$apid" || true
            wait_gone "$apid" 600 || die "the agent (pid $apid) did not stop"
        fi
        rm -f "$agent_pidfile"
    fi
    if [[ -f $data_dir/postmaster.pid ]]; then
        local pgpid
        pgpid=$(head -n 1 "$data_dir/postmaster.pid")
        if [[ $pgpid =~ ^[0-9]+$ ]] && alive "$pgpid"; then
            say "stopping PostgreSQL (pid $pgpid, fast shutdown)"
            kill -INT "$pgpid" || true
            wait_gone "$pgpid" 600 || die "PostgreSQL (pid $pgpid) did not stop"
        fi
    fi
    say "stopped"
}

case "${1:-run}" in
run) ;;
stop)
    stop_all
    exit 0
    ;;
*) die "usage: tools/run-local.sh [run|stop]" ;;
esac

bash tools/setup.sh
cargo build --release -p guest-agent
[[ -x $bin ]] || die "$bin was not built"

if [[ -f $agent_pidfile ]] && alive "$(<"$agent_pidfile")"; then
    die "an agent is already running (pid $(<"$agent_pidfile")); stop it with: tools/run-local.sh stop"
fi

mkdir -p "$state_dir" "$data_dir" "$run_dir"
chmod 0755 "$root/.tmp" "$base" "$run_dir"
chmod 0700 "$state_dir" "$data_dir"
if [[ $(id -u) -eq 0 ]]; then
    chown postgres:postgres "$data_dir" "$run_dir"
    # The postgres user must be able to reach the data directory through every parent.
    runuser -u postgres -- test -x "$base" ||
        die "the postgres user cannot traverse $base; move the checkout to a directory others can enter (e.g. chmod o+x on its parents)"
fi

cat >"$conf" <<TOML
# Written by tools/run-local.sh; see guest-agent.example.toml for every option.
[agent]
instance_id = "local"
state_dir = "$state_dir"
shutdown_grace_secs = 30

[log]
format = "human"
level = "info"

[datastore]
manager = "postgresql"
data_dir = "$data_dir"
run_dir = "$run_dir"
bind_address = "127.0.0.1"
port = $pg_port
os_user = "postgres"
bin_dirs = ["$pg_bin"]

[transport.http]
enabled = true
# Plaintext: allowed on loopback only. Elsewhere the agent requires [transport.http.tls].
listen = "$http_addr"
TOML
say "config: $conf"

call() {
    "$bin" call "$@" --url "$url" --timeout 60
}

# Prepares the agent once it answers (runs in the background while the agent runs).
prepare_when_up() {
    local i
    for ((i = 0; i < 300; i++)); do
        if curl -fsS -o /dev/null "$url/healthz" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    local pw
    pw=$(head -c 64 /dev/urandom | base64 -w 0 | tr -dc 'A-Za-z0-9')
    pw=${pw:0:24}
    (umask 077 && printf '%s\n' "$pw" >"$password_file")
    local args
    args=$(printf '{"memory_mb":1024,"databases":[{"_name":"demo"}],"users":[{"_name":"demo","_password":"%s","_databases":[{"_name":"demo"}]}]}' "$pw")
    local reply id state=running
    if ! reply=$(call prepare --args "$args"); then
        say "prepare failed: $reply"
        return 0
    fi
    id=$(grep -Eo '"id"[[:space:]]*:[[:space:]]*"[^"]+"' <<<"$reply" | head -n 1 | sed -E 's/.*"([^"]+)"$/\1/' || true)
    if [[ -z $id ]]; then
        say "prepare returned no operation id: $reply"
        return 0
    fi
    i=0
    while [[ $state == running ]] && ((i++ < 600)); do
        sleep 0.2
        reply=$(call get_operation --args "{\"id\":\"$id\"}") || break
        state=$(grep -Eo '"state"[[:space:]]*:[[:space:]]*"[a-z_]+"' <<<"$reply" | head -n 1 | sed -E 's/.*"([a-z_]+)"$/\1/' || true)
    done
    if [[ $state != succeeded ]]; then
        say "prepare did not succeed: $reply"
        return 0
    fi
    cat >&2 <<EOF

run-local: prepared. PostgreSQL listens on 127.0.0.1:$pg_port; database "demo", user "demo",
run-local: password in $password_file.
run-local: try:
  $bin call list_databases --url $url
  $bin call get_status --url $url
  curl -s $url/v1/status
  psql "host=127.0.0.1 port=$pg_port user=demo dbname=demo"   (password: see above)
run-local: Ctrl-C stops the agent; tools/run-local.sh stop stops PostgreSQL too.

EOF
}

helper_pid=
if [[ ! -e $state_dir/prepare.end ]]; then
    prepare_when_up &
    helper_pid=$!
else
    say "already prepared; try: $bin call list_databases --url $url"
fi

say "starting the agent on $url (Ctrl-C to stop)"
# Its own session: Ctrl-C reaches only this script, which forwards one SIGTERM (a second
# signal would force the agent to abort in-flight work).
setsid "$bin" run --config "$conf" &
agent_pid=$!
printf '%s\n' "$agent_pid" >"$agent_pidfile"

signalled=no
forward() {
    signalled=yes
    kill -TERM "$agent_pid" 2>/dev/null || true
}
trap forward INT TERM

rc=0
while :; do
    if wait "$agent_pid"; then rc=0; else rc=$?; fi
    # A trapped signal makes `wait` return early (status > 128); wait again for the agent's
    # own exit status (bash keeps it even if the agent was reaped meanwhile).
    if [[ $signalled == yes ]] && ((rc > 128)); then
        signalled=no
        continue
    fi
    break
done
if [[ -n $helper_pid ]]; then
    kill "$helper_pid" 2>/dev/null || true
fi
rm -f "$agent_pidfile"
say "agent exited with status $rc; PostgreSQL keeps running (tools/run-local.sh stop stops it)"
exit "$rc"
