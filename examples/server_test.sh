#!/bin/bash
# dmoe-server end to end: it starts a DHT swarm and declares its experts there (seen by dmoe_dht_node from another
# process); SIGTERM leaves a checkpoint per expert and exit status 0; a restart loads those checkpoints and keeps
# its key; SIGINT also exits 0; bad arguments exit 2.
set -euo pipefail
server=$1
dht_node=$2
out=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  rm -rf "$out"
}
trap cleanup EXIT
# Waits (bounded) for a line of the server's output; prints what follows the prefix.
wait_line() {
  for _ in $(seq 400); do grep -q "^$2" "$1" && break; sleep 0.05; done
  sed -n "s/^$2//p" "$1" | head -1
}
start() {
  "$server" --experts 'ffn.[0:2].[0:2]' --hidden-dim 8 --listen 127.0.0.1:0 --checkpoint-dir "$out/ckpt" \
    --update-period 1 --stats-period 0 "$@" > "$out/server.out" 2> "$out/server.err" &
  pid=$!
}
stop_with() {
  kill "-$1" "$pid"
  local status=0
  wait "$pid" || status=$?
  pid=
  [ "$status" -eq 0 ] || { echo "dmoe-server exited with $status after SIG$1:"; cat "$out/server.err"; exit 1; }
}

start
dht=$(wait_line "$out/server.out" "join with: --initial-peers ")
[ -n "$dht" ] || { echo "the server did not start:"; cat "$out/server.out" "$out/server.err"; exit 1; }
rpc=$(wait_line "$out/server.out" "serving 4 ffn experts (ffn.0.0 ... ffn.1.1) at ")
[ -n "$rpc" ] || { echo "the server did not print its address:"; cat "$out/server.out"; exit 1; }
# Its declarations are in the DHT: the uid, and its successor set under each prefix (its owner subkey).
found=
for _ in $(seq 100); do
  if "$dht_node" --initial-peers "$dht" --timeout 2 get ffn.1.1 > "$out/get.txt" 2> /dev/null; then found=1; break; fi
done
[ -n "$found" ] || { echo "ffn.1.1 was never declared:"; cat "$out/server.err"; exit 1; }
grep -aq "$rpc" "$out/get.txt"
"$dht_node" --initial-peers "$dht" --timeout 2 get ffn.0. --latest > "$out/prefix.txt"
grep -aq "ffn.0.\[\[owner:[0-9a-f]\{64\}\]\]" "$out/prefix.txt"
grep -aq "$rpc" "$out/prefix.txt"

stop_with TERM
for uid in ffn.0.0 ffn.0.1 ffn.1.0 ffn.1.1; do
  [ -f "$out/ckpt/$uid/checkpoint-000001.dmoe" ] || { echo "no checkpoint of $uid after SIGTERM"; ls -R "$out"; exit 1; }
done
[ -f "$out/ckpt/server.key" ] || { echo "no key file"; exit 1; }
key=$(cat "$out/ckpt/server.key")

# A restart loads the checkpoints and keeps its identity; SIGINT ends it cleanly too.
start --log-level info
wait_line "$out/server.out" "serving " > /dev/null
grep -q "expert ffn.1.1: loaded checkpoint .*checkpoint-000001.dmoe" "$out/server.err" || {
  echo "the restart did not load its checkpoints:"; cat "$out/server.err"; exit 1; }
stop_with INT
[ "$(cat "$out/ckpt/server.key")" = "$key" ]
[ -f "$out/ckpt/ffn.1.1/checkpoint-000002.dmoe" ]

# Bad arguments exit 2 with a message.
expect_2() {
  local status=0
  "$server" "$@" > /dev/null 2> "$out/bad.log" || status=$?
  [ "$status" -eq 2 ] || { echo "'$*' exited with $status, not 2:"; cat "$out/bad.log"; exit 1; }
  grep -q . "$out/bad.log" || { echo "'$*' said nothing"; exit 1; }
}
expect_2 --experts 'ffn.[3:3]'
expect_2 --experts ffn.0 --device cuda:1000 --no-dht  # (no such GPU: refused with or without the CUDA backend)
grep -q "cuda:1000" "$out/bad.log" || { echo "--device cuda:1000: the error does not name the device:"; cat "$out/bad.log"; exit 1; }
expect_2 --experts ffn.0 --device tpu --no-dht
expect_2 --experts ffn.0 --listen localhost:5000
expect_2 --experts ffn.0 --expert-cls nope --no-dht
expect_2 --experts ffn.0 --min-batch-size 10 --max-batch-size 5 --no-dht
echo "not a key" > "$out/bad.key"
expect_2 --experts ffn.0 --listen 127.0.0.1:0 --key-file "$out/bad.key"
echo "dmoe-server: all checks passed"
