#!/usr/bin/env bash
# What an #include of dmoe costs a user's translation unit: compiles a file that includes each layer's umbrella
# and <dmoe/dmoe.hpp> (header-only and with DMOE_SEPARATE_COMPILATION), next to the same file including
# <Eigen/Dense>, and prints one JSON line per header and a summary line with the ratios.
#
# Usage: bench/compile_time.sh [--repeat N] [--cxx g++] [--only NAME]   (NAME: one umbrella, <dmoe/NAME.hpp>, e.g. dmoe)
# The time of a compile is its CPU time (user + system, the best of N runs), which a loaded machine disturbs far
# less than wall time; wall seconds and peak memory (max RSS of the compiler) are printed beside it.
set -euo pipefail

repeat=3
cxx=${CXX:-g++}
only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repeat) repeat=$2; shift 2 ;;
    --cxx) cxx=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "compile_time.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags=(-std=c++20 -O2 -I"$root/include" -I/usr/include/eigen3)

# Prints "cpu_seconds wall_seconds peak_kb" of the best (least CPU) of $repeat compiles of one header.
measure() {
  local header=$1; shift
  printf '#include <%s>\nint main() {}\n' "$header" > "$work/tu.cpp"
  local best_cpu="" best_line=""
  for ((i = 0; i < repeat; i++)); do
    if ! /usr/bin/time -f '%U %S %e %M' -o "$work/time" "$cxx" "${flags[@]}" "$@" -c "$work/tu.cpp" \
         -o "$work/tu.o" 2> "$work/err"; then
      echo "compile_time.sh: compiling <$header> $* failed:" >&2
      cat "$work/err" >&2
      exit 1
    fi
    read -r user sys wall kb < "$work/time"
    local cpu
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    if [[ -z "$best_cpu" ]] || awk -v a="$cpu" -v b="$best_cpu" 'BEGIN { exit !(a < b) }'; then
      best_cpu=$cpu
      best_line="$cpu $wall $kb"
    fi
  done
  echo "$best_line"
}

# Prints the megabytes g++ allocates in its garbage-collected heap compiling one header with collection turned off:
# the compiler's work, repeatable to the megabyte on a loaded machine where CPU time moves by a third ("null"
# for a compiler without -fmem-report). With collection on, the figure moves by tens of MB when an edit shifts
# the moment of a collection.
allocated_mb() {
  local header=$1; shift
  printf '#include <%s>\nint main() {}\n' "$header" > "$work/tu.cpp"
  local total
  total=$("$cxx" "${flags[@]}" "$@" --param ggc-min-heapsize=8000000 --param ggc-min-expand=100000 -fmem-report \
          -c "$work/tu.cpp" -o "$work/tu.o" 2>&1 | awk '$1 == "Total" && $2 ~ /[kMG]$/ { print $2; exit }') || true
  case "$total" in
    *M) echo "${total%M}" ;;
    *G) echo $(( ${total%G} * 1024 )) ;;
    *k) echo $(( ${total%k} / 1024 )) ;;
    *) echo null ;;
  esac
}

declare -A cpu_of mem_of alloc_of
report() {  # header mode extra-flags...
  local header=$1 mode=$2; shift 2
  read -r cpu wall kb < <(measure "$header" "$@")
  local allocated
  allocated=$(allocated_mb "$header" "$@")
  cpu_of["$header/$mode"]=$cpu
  mem_of["$header/$mode"]=$kb
  alloc_of["$header/$mode"]=$allocated
  printf '{"bench":"compile_time","header":"%s","mode":"%s","cpu_s":%s,"wall_s":%s,"peak_mb":%d,"allocated_mb":%s,"compiler":"%s"}\n' \
    "$header" "$mode" "$cpu" "$wall" $((kb / 1024)) "$allocated" "$("$cxx" --version | head -1)"
}

report Eigen/Dense baseline
headers=(dmoe/core.hpp dmoe/async.hpp dmoe/net.hpp dmoe/dht.hpp dmoe/tensor.hpp dmoe/ops.hpp dmoe/nn.hpp dmoe/moe.hpp dmoe/dmoe.hpp)
[[ -n "$only" ]] && headers=("dmoe/$only.hpp")
for header in "${headers[@]}"; do
  report "$header" header_only
  report "$header" separate -DDMOE_SEPARATE_COMPILATION
done

if [[ -n "${cpu_of[dmoe/dmoe.hpp/header_only]:-}" ]]; then
  eigen=${cpu_of[Eigen/Dense/baseline]}
  dmoe=${cpu_of[dmoe/dmoe.hpp/header_only]}
  separate=${cpu_of[dmoe/dmoe.hpp/separate]}
  peak=0
  for key in "${!mem_of[@]}"; do
    [[ $key == dmoe/* && ${mem_of[$key]} -gt $peak ]] && peak=${mem_of[$key]}
  done
  awk -v e="$eigen" -v d="$dmoe" -v s="$separate" -v p="$peak" -v ae="${alloc_of[Eigen/Dense/baseline]}" \
      -v ad="${alloc_of[dmoe/dmoe.hpp/header_only]}" -v as="${alloc_of[dmoe/dmoe.hpp/separate]}" 'BEGIN {
    printf "{\"bench\":\"compile_time\",\"dmoe_hpp_s\":%.2f,\"dmoe_hpp_separate_s\":%.2f,\"eigen_dense_s\":%.2f,", d, s, e
    printf "\"dmoe_hpp_ratio_vs_eigen\":%.2f,\"separate_compilation_ratio_vs_eigen\":%.2f,\"peak_mb\":%d", d / e, s / e, p / 1024
    if (ae != "null" && ae > 0)
      printf ",\"allocated_ratio_vs_eigen\":%.2f,\"separate_allocated_ratio_vs_eigen\":%.2f", ad / ae, as / ae
    printf "}\n"
  }'
fi
