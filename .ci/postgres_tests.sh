#!/usr/bin/env bash
# The label store (and the training-runs table) on PostgreSQL too: .ci/postgres.sh starts
# a local server on a free port; its URL goes to the tests only
# (SQUEEZESAM_TEST_POSTGRES_URL), never as DATABASE_URL, so the rest of the suite stays on
# SQLite. Runs every test with a PostgreSQL case, wherever it lives: tests/conftest.py marks
# `postgres` each test with a "postgresql" parameter (the `store` fixture, `open_store`).
#
#   .ci/postgres_tests.sh [pytest arguments]
#
# Fails loudly, running nothing, when PostgreSQL does not start or gives no URL (the
# PostgreSQL cases would otherwise all skip and pass), and when no test is collected.
# SQUEEZESAM_POSTGRES_SH replaces .ci/postgres.sh (tests of this script only).
set -euo pipefail
cd "$(dirname "$0")/.."

postgres_sh=${SQUEEZESAM_POSTGRES_SH:-.ci/postgres.sh}
if ! exports=$("$postgres_sh"); then
    echo "FAIL: PostgreSQL did not start ($postgres_sh failed): no PostgreSQL pass" >&2
    exit 1
fi
url=$(printf '%s\n' "$exports" | sed -n 's/^export SQUEEZESAM_TEST_POSTGRES_URL=//p' | tail -1)
if [ -z "$url" ]; then
    echo "FAIL: $postgres_sh gave no SQUEEZESAM_TEST_POSTGRES_URL: no PostgreSQL pass" >&2
    exit 1
fi
export SQUEEZESAM_TEST_POSTGRES_URL=$url
unset DATABASE_URL

rc=0
timeout "${POSTGRES_TESTS_TIMEOUT:-10m}" pytest -q -rs -m "postgres and not slow and not e2e" tests "$@" \
    || rc=$?
if [ "$rc" -eq 5 ]; then echo "FAIL: the PostgreSQL pass collected no tests" >&2; fi
if [ "$rc" -eq 124 ]; then echo "FAIL: the PostgreSQL pass ran out of time" >&2; fi
exit "$rc"
