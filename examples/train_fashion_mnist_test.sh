#!/bin/bash
# train_fashion_mnist --processes: the swarm runs as dmoe_dht_node and dmoe-server processes; a few steps train (with
# fault injection on the expert calls); at the end every process it started is gone — after a normal end, after
# SIGTERM, and after the trainer is killed. Then --dense with --checkpoint and --resume, and a trainer joining a
# dmoe-server's swarm with --initial-peers.
set -euo pipefail
trainer=$1
out=$(mktemp -d)
pid=
pids=()
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$out"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- stdout"; cat "$out/stdout"; echo "--- stderr"; tail -50 "$out/stderr"; exit 1; }
# The pids of the processes the trainer started (from its "swarm: ..." line), waited for up to 60 s.
swarm_pids() {
  for _ in $(seq 1200); do
    line=$(grep '^swarm: ' "$out/stdout" || true)
    [ -n "$line" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$line" ] || fail "no swarm line"
  pids=($(echo "$line" | sed -n 's/.*(pids \([0-9 ]*\)).*/\1/p'))
  [ "${#pids[@]}" -eq 4 ] || fail "expected 4 pids (2 DHT nodes, 2 servers): $line"
}
# Every one of them has exited (waits for each exit, bounded).
all_gone() {
  for p in "${pids[@]}"; do
    timeout 20 tail --pid="$p" -f /dev/null || fail "process $p ($1) is still running"
  done
}
run() { "$trainer" --processes --servers 2 --hidden 32 --batch-size 64 --out "$out/run" "$@" > "$out/stdout" 2> "$out/stderr" & pid=$!; }

# 1. A normal end; server 1 is stopped (SIGTERM: it writes its checkpoints) and started again (it loads them).
run --epochs 0.01 --progress-interval 0.2 --latency-ms 1 --jitter 2 --failure-rate 0.02 \
  --stop-server-at 0.3 --restart-server-at 0.6
swarm_pids
status=0; wait "$pid" || status=$?; pid=
[ "$status" -eq 0 ] || fail "the trainer exited with $status"
tail -1 "$out/stdout" | grep -q '^{"demo":"train_fashion_mnist","test_accuracy":' || fail "no JSON line"
grep -q 'experts declared in the DHT' "$out/stdout" || fail "experts not found"
restarted=$(sed -n 's/.*started server 1 again from its checkpoint: 8 of its 8 experts loaded a checkpoint (pid \([0-9]*\),.*/\1/p' \
  "$out/stdout")
[ -n "$restarted" ] || fail "server 1 was not restarted from its checkpoint"
pids+=("$restarted")
all_gone "after a normal end"
ls "$out"/run/checkpoints/server-0 | grep -q . || fail "server 0 wrote no checkpoint"

# 2. SIGTERM while training: it stops after the step, stops its processes and exits 143.
run --epochs 5 --progress-interval 0.2
swarm_pids
for _ in $(seq 1200); do grep -q '^epoch ' "$out/stdout" && break; sleep 0.05; done
kill -TERM "$pid"
status=0; wait "$pid" || status=$?; pid=
[ "$status" -eq 143 ] || fail "the trainer exited with $status after SIGTERM"
all_gone "after SIGTERM"

# 3. SIGKILL: the kernel ends its processes (they die with their parent).
run --epochs 5 --progress-interval 0.2
swarm_pids
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true; pid=
all_gone "after SIGKILL of the trainer"

# 4. --dense trains without a swarm; --checkpoint, then --resume continues from the step it saved.
pids=()
status=0
"$trainer" --dense --hidden 32 --batch-size 64 --epochs 0.02 --checkpoint "$out/dense.ckpt" --out "$out/dense" \
  > "$out/stdout" 2> "$out/stderr" || status=$?
[ "$status" -eq 0 ] || fail "--dense exited with $status"
grep -q 'a dense model (ffn block, inner width 512)' "$out/stdout" || fail "not the dense model"
[ -s "$out/dense.ckpt" ] || fail "no checkpoint"
status=0
"$trainer" --dense --hidden 32 --batch-size 64 --epochs 0.04 --resume "$out/dense.ckpt" --out "$out/dense2" \
  > "$out/stdout" 2> "$out/stderr" || status=$?
[ "$status" -eq 0 ] || fail "--resume exited with $status"
grep -q "resumed from $out/dense.ckpt at step 19" "$out/stdout" || fail "did not resume at step 19"
grep -q 'step 38/38' "$out/stdout" || fail "did not go on to step 38"
# A checkpoint of another model is refused with the reason.
status=0
"$trainer" --dense --hidden 16 --epochs 0.01 --resume "$out/dense.ckpt" --out "$out/dense3" > "$out/stdout" 2> "$out/stderr" ||
  status=$?
[ "$status" -eq 1 ] && grep -q "cannot resume from" "$out/stderr" || fail "a mismatched checkpoint was not refused ($status)"
# A checkpoint of the same model with another batch size: its step would mean something else, refused.
status=0
"$trainer" --dense --hidden 32 --batch-size 32 --epochs 0.04 --resume "$out/dense.ckpt" --out "$out/dense4" \
  > "$out/stdout" 2> "$out/stderr" || status=$?
[ "$status" -eq 2 ] && grep -q "was written with --batch-size 64, not 32" "$out/stderr" ||
  fail "a checkpoint of another batch size was not refused ($status)"
# 5. Joining someone else's swarm (README "Train over several machines"): a dmoe-server started here, the trainer
# with --initial-peers; then a trainer whose --hidden is not the servers' gives up with the schema's message.
server="$(dirname "$trainer")/dmoe-server"
"$server" --experts 'ffn.[0:4].[0:4]' --hidden-dim 32 --listen 127.0.0.1:0 --checkpoint-dir "$out/volunteer" \
  > "$out/server.out" 2> "$out/server.err" &
server_pid=$!
pids=("$server_pid")
join=
for _ in $(seq 600); do
  join=$(sed -n 's/^join with: --initial-peers //p' "$out/server.out")
  [ -n "$join" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$join" ] || { cat "$out/server.err"; fail "dmoe-server did not start"; }
status=0
"$trainer" --initial-peers "$join" --hidden 32 --batch-size 64 --epochs 0.01 --out "$out/joined" \
  > "$out/stdout" 2> "$out/stderr" || status=$?
[ "$status" -eq 0 ] || fail "the trainer joining $join exited with $status"
grep -q '^16 of 16 experts declared in the DHT$' "$out/stdout" || fail "the volunteer's experts were not found"
grep -q 'experts answering' "$out/stdout" || fail "no expert answered"
tail -1 "$out/stdout" | grep -q '^{"demo":"train_fashion_mnist","test_accuracy":' || fail "no JSON line (joined)"
status=0
"$trainer" --initial-peers "$join" --hidden 16 --batch-size 64 --epochs 0.05 --out "$out/mismatch" \
  > "$out/stdout" 2> "$out/stderr" || status=$?
[ "$status" -eq 1 ] && grep -q 'the first 10 steps all failed; giving up' "$out/stderr" &&
  grep -q 'schema' "$out/stdout" || fail "a --hidden other than the servers' was not refused ($status)"
kill -TERM "$server_pid"
wait "$server_pid" || fail "dmoe-server did not exit cleanly"
pids=()
# 6. --device: a device this machine or build lacks is refused with exit status 2 and the reason; on a GPU the
# DMoE model trains there, with its servers' experts (threads) on the same GPU.
status=0
"$trainer" --device cuda:1000 --epochs 0.01 --out "$out/nodevice" > "$out/stdout" 2> "$out/stderr" || status=$?
[ "$status" -eq 2 ] && grep -q 'cuda:1000' "$out/stderr" || fail "--device cuda:1000 was not refused ($status)"
gpu=skipped
status=0
"$trainer" --device cuda:0 --servers 2 --hidden 32 --batch-size 64 --epochs 0.02 --out "$out/gpu" \
  > "$out/stdout" 2> "$out/stderr" || status=$?
if [ "$status" -eq 2 ] && grep -Eq 'no CUDA (GPU is present|backend)' "$out/stderr"; then
  echo "--device cuda:0 not tried: $(tail -1 "$out/stderr")"
else
  [ "$status" -eq 0 ] || fail "--device cuda:0 exited with $status"
  tail -1 "$out/stdout" | grep -q '^{"demo":"train_fashion_mnist","test_accuracy":' || fail "no JSON line (cuda:0)"
  gpu=trained
fi
echo "train_fashion_mnist: 3 runs with processes, every process gone each time; dense checkpoint and resume; joined a volunteer's swarm; on cuda:0: $gpu"

