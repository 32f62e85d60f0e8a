#!/usr/bin/env bash
# Install the servers the stack and the tests run (redis-server, nginx, prometheus) with apt-get,
# only those missing. Package post-install scripts must not start system services: we start our own.
set -euo pipefail
missing=()
for pair in "$@"; do
  bin="${pair%%:*}"; pkg="${pair##*:}"
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || [ -x "/usr/bin/$bin" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing with apt-get: ${missing[*]}"
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && created=1
fi
trap '[ $created -eq 1 ] && $SUDO rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
