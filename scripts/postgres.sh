#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL server for the tests, listening on 127.0.0.1 only.
#
#   scripts/postgres.sh start DIR   initialise a cluster in DIR, start it on a free port, create the
#                                   database bench_test and print its URL (also written to DIR/url)
#   scripts/postgres.sh stop DIR    stop that server; DIR stays for its log (DIR/server.log)
#
# Installs the Debian package `postgresql` with apt-get when no server binaries are found. As
# root the server runs as the `postgres` user, because PostgreSQL refuses to run as root.
# Authentication is `trust`: only this machine can connect (loopback and a socket in DIR).
set -euo pipefail

usage() {
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
action=$1
dir=$2

find_bindir() {
    local pg_ctl_path
    if pg_ctl_path=$(command -v pg_ctl 2>/dev/null); then
        dirname "$(readlink -f "$pg_ctl_path")"
        return 0
    fi
    # Debian keeps the server binaries off PATH, one folder per major version; take the newest.
    local candidate
    candidate=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $candidate && -x $candidate/pg_ctl ]]; then
        echo "$candidate"
        return 0
    fi
    return 1
}

# Run a server command as the cluster's owner.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local bindir
    if ! bindir=$(find_bindir); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "error: PostgreSQL server binaries not found and not root; install the Debian package postgresql" >&2
            exit 1
        fi
        echo "installing PostgreSQL from the Debian package (apt-get install postgresql)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }
        bindir=$(find_bindir) || { echo "error: pg_ctl still not found after installing postgresql" >&2; exit 1; }
    fi

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || { echo "error: user postgres not found; reinstall the postgresql package" >&2; exit 1; }
        chown postgres "$dir"
        # The postgres user must be able to reach DIR, e.g. inside a mode-700 folder from mktemp.
        chmod 755 "$dir"
    fi

    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

    as_owner "$bindir/initdb" --pgdata="$dir/data" --username=bench --auth=trust --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
        || { echo "error: initdb failed; see $dir/initdb.log" >&2; cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$bindir/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --wait --timeout=60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=200" \
        start >&2 \
        || { echo "error: the PostgreSQL server did not start; see $dir/server.log" >&2; cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bindir/createdb" --host=127.0.0.1 --port="$port" --username=bench bench_test

    local url="postgresql://bench@127.0.0.1:$port/bench_test"
    echo "$url" >"$dir/url"
    echo "$bindir" >"$dir/bindir"
    echo "$url"
}

stop() {
    [[ -f $dir/bindir && -d $dir/data ]] || { echo "no server was started in $dir" >&2; return 0; }
    local bindir
    bindir=$(cat "$dir/bindir")
    as_owner "$bindir/pg_ctl" --pgdata="$dir/data" --mode=fast --wait stop >&2 || true
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
