#!/usr/bin/env bash
# The system packages rackwarden needs beyond Rust and Python, from Debian's archive;
# installs only what is missing (with sudo when not root).
#
#   bash tools/deps.sh          # building: protoc (etcd-client compiles etcd's API at build time)
#   bash tools/deps.sh --test   # and the tests' outside peers: etcd (hil-tests/tests/ha.rs)
#                               # and Chromium (hil-tests/tests/site_page.rs)
set -euo pipefail

want=()
command -v protoc >/dev/null 2>&1 || want+=(protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
  command -v etcd >/dev/null 2>&1 || want+=(etcd-server)
  command -v chromium >/dev/null 2>&1 || want+=(chromium)
fi
[ ${#want[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "tools/deps.sh: installing ${want[*]}" >&2
$SUDO apt-get update -q >&2
# The etcd-server package would start a system etcd where systemd runs: the tests start
# their own on loopback and need no service (policy-rc.d keeps it off where honoured).
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want[@]}" >&2
