#!/bin/bash
# Three dmoe_dht_node processes, each in its own network namespace, joined by veth pairs to a bridge: values put
# from one namespace are got from the others. Exit 77 (skipped) with the reason when namespaces are forbidden.
set -uo pipefail
bin=$1
tag=dm$$
out=$(mktemp -d)
pids=()
skip() { echo "skipped: $*"; exit 77; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  for ns in ${tag}b ${tag}1 ${tag}2 ${tag}3; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$out"
}
trap cleanup EXIT
[ "$(id -u)" -eq 0 ] || skip "network namespaces need root"
command -v ip > /dev/null || skip "iproute2 (ip) is not installed"
ip netns add ${tag}b 2> "$out/err" || skip "this machine forbids network namespaces: $(cat "$out/err")"
ip -n ${tag}b link add br0 type bridge 2> "$out/err" || skip "no bridge in a namespace: $(cat "$out/err")"
ip -n ${tag}b link set br0 up
for i in 1 2 3; do
  ip netns add ${tag}$i
  ip link add ${tag}v$i type veth peer name ${tag}p$i 2> "$out/err" || skip "no veth pairs: $(cat "$out/err")"
  ip link set ${tag}v$i netns ${tag}$i
  ip link set ${tag}p$i netns ${tag}b
  ip -n ${tag}$i addr add 10.77.0.$i/24 dev ${tag}v$i
  ip -n ${tag}$i link set ${tag}v$i up
  ip -n ${tag}$i link set lo up
  ip -n ${tag}b link set ${tag}p$i master br0
  ip -n ${tag}b link set ${tag}p$i up
done

set -e
start_node() {  # start_node i [initial peer]
  local i=$1
  shift
  ip netns exec ${tag}$i "$bin" --listen 10.77.0.$i:4000 "$@" > "$out/node$i.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do grep -q "^join with" "$out/node$i.log" && return 0; sleep 0.05; done
  echo "node $i did not start:"; cat "$out/node$i.log"; return 1
}
start_node 1
start_node 2 --initial-peers 10.77.0.1:4000
start_node 3 --initial-peers 10.77.0.1:4000
ip netns exec ${tag}2 "$bin" --initial-peers 10.77.0.2:4000 put expert.0 server-2
ip netns exec ${tag}3 "$bin" --initial-peers 10.77.0.3:4000 put expert.1 server-3
ip netns exec ${tag}1 "$bin" --initial-peers 10.77.0.1:4000 get expert.0 | grep -q server-2
ip netns exec ${tag}3 "$bin" --initial-peers 10.77.0.3:4000 get expert.0 | grep -q server-2
ip netns exec ${tag}2 "$bin" --initial-peers 10.77.0.2:4000 get expert.1 | grep -q server-3
for p in "${pids[@]}"; do kill -TERM "$p"; done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
for i in 1 2 3; do grep -q "stopped by SIGTERM" "$out/node$i.log"; done
echo "dht_node_netns: ok"
