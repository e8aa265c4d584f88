#!/usr/bin/env bash
# Installs what the tests and tools/run-local.sh need from Debian packages, idempotently:
# PostgreSQL 15 (server + client), MariaDB (server, client, backup), setpriv/runuser
# (util-linux), CA certificates, curl, ps.
# Runs `apt-get update` only when something is missing, never starts a system service, and
# verifies the result. Run it as root.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
PACKAGES=(postgresql-15 postgresql-client-15 mariadb-server mariadb-client mariadb-backup util-linux ca-certificates curl procps)

say() { printf 'setup: %s\n' "$*" >&2; }
die() {
    printf 'setup: ERROR: %s\n' "$*" >&2
    exit 1
}

installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)
    [[ $status == "install ok installed" ]]
}

missing=()
for p in "${PACKAGES[@]}"; do
    if ! installed "$p"; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        die "missing packages: ${missing[*]}; run tools/setup.sh as root"
    fi
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    say "installing: ${missing[*]}"

    # Package scripts must not start daemons (they would listen on the default ports).
    # Debian consults /usr/sbin/policy-rc.d; put a refusing one in place if there is none.
    policy=/usr/sbin/policy-rc.d
    created_policy=no
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created_policy=yes
    fi
    cleanup_policy() {
        if [[ $created_policy == yes ]]; then
            rm -f "$policy"
        fi
    }
    trap cleanup_policy EXIT

    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null ||
        die "apt-get install ${missing[*]} failed"
fi

# Verify: everything the tests use must be there now.
for p in "${PACKAGES[@]}"; do
    installed "$p" || die "package $p is still not installed"
done
for tool in initdb postgres pg_ctl; do
    [[ -x $PG_BIN/$tool ]] || die "$PG_BIN/$tool is missing (postgresql-15 broken?)"
done
version=$("$PG_BIN/initdb" --version) || die "$PG_BIN/initdb --version failed"
[[ $version == *" 15."* ]] || die "unexpected initdb version: $version"
getent passwd postgres >/dev/null || die "the postgres OS user does not exist"
if [[ " ${PACKAGES[*]} " == *" mariadb-server "* ]]; then
    [[ -x /usr/sbin/mariadbd ]] || die "/usr/sbin/mariadbd is missing (mariadb-server broken?)"
    command -v mariadb-backup >/dev/null || die "mariadb-backup is not on PATH"
fi
for tool in setpriv runuser curl ps psql; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
say "ok: $version; setpriv, runuser, curl, ps, psql present; postgres user exists"
