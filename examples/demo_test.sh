#!/bin/bash
# The demo, shortened to a tenth of an epoch: it trains (the loss falls), stops server 1 and starts it again from its
# checkpoint, evaluates on the test set, writes the metrics CSV and the plot, and ends with its JSON line.
set -euo pipefail
demo=$1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
"$demo" --epochs 0.1 --out "$out/run" --progress-interval 0.5 > "$out/stdout" 2> "$out/stderr" || status=$?
fail() { echo "FAIL: $*"; echo "--- stdout"; cat "$out/stdout"; echo "--- stderr"; tail -50 "$out/stderr"; exit 1; }
[ "$status" -eq 0 ] || fail "the demo exited with $status"
last=$(tail -1 "$out/stdout")
[[ "$last" =~ ^\{\"demo\":\"fashion_mnist\",\"test_accuracy\":([0-9.]+),\"seconds\":[0-9.]+,\"samples_per_s\":[0-9.]+\}$ ]] ||
  fail "the last line is not the JSON line: $last"
accuracy=${BASH_REMATCH[1]}
grep -q "stopped server 1" "$out/stdout" || fail "server 1 was not stopped"
grep -q "started server 1 again from its checkpoint: 4 of its 4 experts loaded a checkpoint" "$out/stdout" ||
  fail "server 1 was not restarted from its checkpoint"
# The loss fell: the first and last windows' mean losses, "loss A -> B".
read -r first last_loss < <(sed -n 's/.*; loss \([0-9.]*\) -> \([0-9.]*\);.*/\1 \2/p' "$out/stdout")
[ -n "$first" ] || fail "no loss summary"
awk -v a="$first" -v b="$last_loss" 'BEGIN { exit !(b < a) }' || fail "the loss did not fall ($first -> $last_loss)"
# Better than chance (0.1) by far after 4,700 samples.
awk -v a="$accuracy" 'BEGIN { exit !(a > 0.5) }' || fail "test accuracy $accuracy"
rows=$(($(wc -l < "$out/run/metrics.csv") - 1))
[ "$rows" -ge 2 ] || fail "metrics.csv has $rows rows"
head -1 "$out/run/metrics.csv" | grep -q '^step,wall_s,loss,accuracy,samples_per_s,experts_answered,experts_chosen$' ||
  fail "metrics.csv header"
[ -s "$out/run/metrics.png" ] || fail "no plot"
echo "demo: loss $first -> $last_loss, test accuracy $accuracy, $rows metrics rows"
