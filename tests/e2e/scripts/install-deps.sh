#!/usr/bin/env bash
# Installs the Debian packages the tests and the local cluster use. Safe to run again.
set -euo pipefail

packages=(
  iproute2 nftables bird2 iperf3 iputils-ping netcat-openbsd
  containernetworking-plugins conntrack ethtool util-linux procps psmisc
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "all ${#packages[@]} packages present"
else
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# BIRD is started by the agent (or by a test) with its own socket; the packaged service
# must not hold the default one or listen on port 179 in the root namespace.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet bird 2>/dev/null; then
  systemctl disable --now bird || true
fi

for tool in go cargo; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install it first" >&2; exit 1; }
done
