#!/usr/bin/env bash
# The system packages rackwarden needs beyond Rust and Python, from Debian's archive;
# installs only what is missing (with sudo when not root).
#
#   bash tools/deps.sh          # building: protoc (etcd-client compiles etcd's API at build time)
#   bash tools/deps.sh --test   # and the tests' outside peers: etcd (hil-tests/tests/ha.rs),
#                               # Chromium (hil-tests/tests/site_page.rs), promtool from
#                               # Debian's prometheus package (agent/tests/monitoring.rs) and
#                               # Alertmanager (hil-tests/tests/alertmanager.rs)
set -euo pipefail

want=()
command -v protoc >/dev/null 2>&1 || want+=(protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
  command -v etcd >/dev/null 2>&1 || want+=(etcd-server)
  command -v chromium >/dev/null 2>&1 || want+=(chromium)
  command -v promtool >/dev/null 2>&1 || want+=(prometheus)
  command -v prometheus-alertmanager >/dev/null 2>&1 || want+=(prometheus-alertmanager)
fi
[ ${#want[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "tools/deps.sh: installing ${want[*]}" >&2
$SUDO apt-get update -q >&2
# The etcd-server, prometheus and prometheus-alertmanager packages would start a system
# etcd, a Prometheus and an Alertmanager where systemd runs: the tests start their own
# etcd and Alertmanager on loopback and need only promtool from prometheus, no service
# (policy-rc.d keeps them off where honoured). prometheus goes in without its recommended
# node exporter, which the tests do not use.
apt_install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; }
quiet=()
rest=()
for p in "${want[@]}"; do
  case "$p" in
    prometheus|prometheus-alertmanager) quiet+=("$p") ;;
    *) rest+=("$p") ;;
  esac
done
[ ${#rest[@]} -eq 0 ] || apt_install "${rest[@]}"
if [ ${#quiet[@]} -gt 0 ]; then
  apt_install --no-install-recommends "${quiet[@]}"
  # Where systemd is PID 1 and no policy-rc.d held the packages back, they started a
  # Prometheus server on :9090 and an Alertmanager on :9093: stop them and keep them off.
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    for p in "${quiet[@]}"; do
      $SUDO systemctl disable --now "$p.service" >&2 || true
    done
  fi
fi
