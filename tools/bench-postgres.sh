#!/usr/bin/env bash
# rofr's broker on PostgreSQL with 1, 2 and 3 replicas, beside pgbench's TPS on the
# same server, in one run. Usage: tools/bench-postgres.sh [postgres://USER@HOST:PORT/DB]
# Both make (and afterwards drop) their own scratch databases on that server.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER="${1:-postgres://postgres@127.0.0.1:5432/postgres}"
NEEDS="${NEEDS:-20000}"
CLIENTS="${CLIENTS:-64}"
BASE="${SERVER%/*}"
DB="rofr_pgbench_$$"

cargo build --release --quiet -p rofr
psql "$SERVER" --quiet -c "CREATE DATABASE $DB"
trap 'psql "$SERVER" --quiet -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT

echo "== $(nproc) cores, $(psql "$SERVER" -Atc 'SHOW server_version') with synchronous_commit=$(psql "$SERVER" -Atc 'SHOW synchronous_commit')"
pgbench --initialize --quiet --scale 10 "$BASE/$DB" 2>/dev/null
for clients in 1 16; do
  echo "== pgbench, TPC-B-like (5 statements a transaction), scale 10, $clients client(s), 20 s"
  pgbench --client "$clients" --jobs "$(( clients < 2 ? 1 : 2 ))" --time 20 --no-vacuum "$BASE/$DB" \
    | grep -E "^(tps|latency average)"
done
echo "== rofr bench broker, $NEEDS needs, $CLIENTS clients, 1, 2 and 3 replicas"
ROFR_LOG=error ./target/release/rofr bench broker --database "$SERVER" --replicas 1,2,3 \
  --needs "$NEEDS" --clients "$CLIENTS"
