#!/bin/bash
# dmoe_dht_node end to end: a node, puts and gets through it from other processes, then SIGTERM stops it cleanly.
set -euo pipefail
bin=$1
out=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$out"; }
trap cleanup EXIT
"$bin" --listen 127.0.0.1:0 > "$out/node.log" &
pid=$!
# Wait (bounded) for the node to print the address to join with.
for _ in $(seq 200); do grep -q "^join with" "$out/node.log" && break; sleep 0.05; done
addr=$(sed -n 's/^join with: --initial-peers //p' "$out/node.log")
[ -n "$addr" ] || { echo "the node did not start:"; cat "$out/node.log"; exit 1; }
"$bin" --initial-peers "$addr" put greeting hello
"$bin" --initial-peers "$addr" put ffn.3. server-a --subkey 17
"$bin" --initial-peers "$addr" get greeting | grep -q hello
"$bin" --initial-peers "$addr" get ffn.3. --latest | grep -q "ffn.3.\[17\].server-a"
if "$bin" --initial-peers "$addr" --timeout 2 get missing; then echo "found a key never stored"; exit 1; fi
if "$bin" --initial-peers 127.0.0.1:1 --timeout 0.5 get greeting 2> "$out/err.log"; then exit 1; fi
grep -q "could not join the swarm" "$out/err.log"
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || { echo "the node exited with $status"; exit 1; }
grep -q "stopped by SIGTERM" "$out/node.log"
echo "dht_node_cli: ok"
