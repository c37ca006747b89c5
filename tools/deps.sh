#!/usr/bin/env bash
# The system packages rackwarden needs beyond Rust and Python, from Debian's archive;
# installs only what is missing (with sudo when not root).
#
#   bash tools/deps.sh          # building: protoc (etcd-client compiles etcd's API at build time)
#   bash tools/deps.sh --test   # and the tests' outside peers: etcd (hil-tests/tests/ha.rs),
#                               # Chromium (hil-tests/tests/site_page.rs) and promtool from
#                               # Debian's prometheus package (agent/tests/monitoring.rs)
set -euo pipefail

want=()
command -v protoc >/dev/null 2>&1 || want+=(protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
  command -v etcd >/dev/null 2>&1 || want+=(etcd-server)
  command -v chromium >/dev/null 2>&1 || want+=(chromium)
  command -v promtool >/dev/null 2>&1 || want+=(prometheus)
fi
[ ${#want[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "tools/deps.sh: installing ${want[*]}" >&2
$SUDO apt-get update -q >&2
# The etcd-server and prometheus packages would start a system etcd and a Prometheus
# server where systemd runs: the tests start their own etcd on loopback and need only
# promtool from the other, no service (policy-rc.d keeps them off where honoured).
# prometheus goes in without its recommended node exporter, which the tests do not use.
apt_install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; }
rest=()
for p in "${want[@]}"; do [ "$p" = prometheus ] || rest+=("$p"); done
[ ${#rest[@]} -eq 0 ] || apt_install "${rest[@]}"
if [ ${#rest[@]} -lt ${#want[@]} ]; then
  apt_install --no-install-recommends prometheus
  # Where systemd is PID 1 and no policy-rc.d held the package back, it started a
  # Prometheus server on :9090: stop it and keep it off (promtool is all the tests use).
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    $SUDO systemctl disable --now prometheus.service >&2 || true
  fi
fi
