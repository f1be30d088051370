#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server whose URL is in $BENCH_TEST_POSTGRES_URL.
# The server is stopped when the command ends, also when it fails; the command's status is kept.
#
#   scripts/with-postgres.sh python -m pytest
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/bench-postgres.XXXXXX")

cleanup() {
    "$here/postgres.sh" stop "$dir" || true
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BENCH_TEST_POSTGRES_URL=$("$here/postgres.sh" start "$dir")
export BENCH_TEST_POSTGRES_URL
echo "PostgreSQL for the tests: $BENCH_TEST_POSTGRES_URL" >&2
"$@"
