#!/bin/bash
# dmoe_dht_node end to end: a node, puts and gets through it from other processes, argument errors (status 2),
# SIGINT ending a bootstrap at once (status 130), then SIGTERM stops the nodes cleanly.
set -euo pipefail
bin=$1
out=$(mktemp -d)
pid=
pid2=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  [ -n "$pid2" ] && kill "$pid2" 2>/dev/null
  rm -rf "$out"
}
trap cleanup EXIT
# Waits (bounded) for a node's log to name the address to join with; prints it.
join_address() {
  for _ in $(seq 200); do grep -q "^join with" "$1" && break; sleep 0.05; done
  sed -n 's/^join with: --initial-peers //p' "$1"
}
"$bin" --listen 127.0.0.1:0 > "$out/node.log" &
pid=$!
addr=$(join_address "$out/node.log")
[ -n "$addr" ] || { echo "the node did not start:"; cat "$out/node.log"; exit 1; }
"$bin" --initial-peers "$addr" put greeting hello
"$bin" --initial-peers "$addr" put ffn.3. server-a --subkey 17
"$bin" --initial-peers "$addr" get greeting | grep -q hello
"$bin" --initial-peers "$addr" get ffn.3. --latest | grep -q "ffn.3.\[17\].server-a"
if "$bin" --initial-peers "$addr" --timeout 2 get missing; then echo "found a key never stored"; exit 1; fi
if "$bin" --initial-peers 127.0.0.1:1 --timeout 0.5 get greeting 2> "$out/err.log"; then exit 1; fi
grep -q "could not join the swarm" "$out/err.log"

# Bad arguments exit with 2: nonsense, hostnames, a port in use, a timeout out of range or not a number, an
# initial peer no node can listen at.
expect_2() {
  local status=0
  "$bin" "$@" > /dev/null 2> "$out/bad.log" || status=$?
  [ "$status" -eq 2 ] || { echo "'$*' exited with $status, not 2:"; cat "$out/bad.log"; exit 1; }
}
expect_2 --listen nonsense
expect_2 --listen localhost:5000
grep -q "hostnames are not accepted" "$out/bad.log"
expect_2 --listen 127.0.0.1:70000
expect_2 --initial-peers example.com:80 get greeting
expect_2 --initial-peers "$addr,127.0.0.1" get greeting
expect_2 --listen "$addr"
grep -q "cannot listen on" "$out/bad.log"
expect_2 --initial-peers "$addr" --timeout 1e300 get greeting
expect_2 --initial-peers "$addr" --timeout -1 get greeting
expect_2 --initial-peers "$addr" put k v --ttl 1e300
for not_a_number in nan -nan inf; do
  expect_2 --initial-peers "$addr" --timeout "$not_a_number" get greeting
  grep -q "not a finite number" "$out/bad.log"
  expect_2 --initial-peers "$addr" put k v --ttl "$not_a_number"
done
expect_2 --initial-peers 127.0.0.1:0 get greeting
grep -q "port 0 names no listening node" "$out/bad.log"
expect_2 --initial-peers 0.0.0.0:5000 get greeting

# Without --listen (every interface) the address printed is one others can use, not 0.0.0.0.
"$bin" --initial-peers "$addr" > "$out/node2.log" &
pid2=$!
addr2=$(join_address "$out/node2.log")
[ -n "$addr2" ] || { echo "the second node did not start:"; cat "$out/node2.log"; exit 1; }
case "$addr2" in 0.0.0.0:*|"[::]:"*) echo "printed an unusable address: $addr2"; exit 1;; esac
"$bin" --initial-peers "$addr2" get greeting | grep -q hello

# SIGINT during a bootstrap that would run 30 s ends it at once with status 130.
"$bin" --initial-peers 127.0.0.1:1 --timeout 30 get greeting 2> "$out/int.log" &
pid3=$!
# Wait (bounded) until the signals are blocked: from then on the signal thread takes SIGINT.
for _ in $(seq 200); do
  mask=$(sed -n 's/^SigBlk:\s*//p' "/proc/$pid3/status" 2>/dev/null || true)
  [ -n "$mask" ] && (( (16#$mask & 2) != 0 )) && break
  sleep 0.05
done
started=$SECONDS
kill -INT "$pid3"
status=0; wait "$pid3" || status=$?
[ "$status" -eq 130 ] || { echo "SIGINT during a bootstrap: exit status $status, not 130"; cat "$out/int.log"; exit 1; }
grep -q "interrupted by SIGINT" "$out/int.log"
(( SECONDS - started <= 5 )) || { echo "SIGINT took $((SECONDS - started)) s to end the bootstrap"; exit 1; }

kill -TERM "$pid2"
status=0; wait "$pid2" || status=$?
pid2=
[ "$status" -eq 0 ] || { echo "the second node exited with $status"; exit 1; }
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || { echo "the node exited with $status"; exit 1; }
grep -q "stopped by SIGTERM" "$out/node.log"
echo "dht_node_cli: ok"
