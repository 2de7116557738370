#!/usr/bin/env bash
# `cargo xtask demo`: a server on a free port and two clients exchanging a
# message, all in a temporary directory. Needs the release binaries
# (xtask builds them first).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/target/release"
work="$(mktemp -d)"
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/missive-server" serve --listen 127.0.0.1:0 --data-dir "$work/server" >"$work/server.out" &
server_pid=$!
for _ in $(seq 100); do
  grep -q 'listening on' "$work/server.out" 2>/dev/null && break
  sleep 0.1
done
url="$(sed -n 's/^missive-server listening on //p' "$work/server.out")"
[ -n "$url" ] || { echo "demo: the server did not start" >&2; exit 1; }
echo "server: $url"

alice=(--home "$work/alice" --server "$url" --ca "$work/server/ca.pem")
bob=(--home "$work/bob" --server "$url" --ca "$work/server/ca.pem")
set -x
"$bin/missive" "${alice[@]}" register alice
"$bin/missive" "${bob[@]}" register bob
"$bin/missive" "${alice[@]}" send bob "hello bob, this is end-to-end encrypted"
"$bin/missive" "${bob[@]}" recv
"$bin/missive" "${bob[@]}" send alice "hello alice"
"$bin/missive" "${alice[@]}" recv
"$bin/missive" "${alice[@]}" safety-number bob
"$bin/missive-server" export-account bob --data-dir "$work/server"
