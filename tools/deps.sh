#!/usr/bin/env bash
# The system packages rackwarden needs beyond Rust and Python, from Debian's archive;
# installs only what is missing (with sudo when not root).
#
#   bash tools/deps.sh          # building: protoc (etcd-client compiles etcd's API at build time)
#   bash tools/deps.sh --test   # and the tests' outside peers: etcd (hil-tests/tests/ha.rs),
#                               # Chromium (hil-tests/tests/site_page.rs), promtool from
#                               # Debian's prometheus package (agent/tests/monitoring.rs) and
#                               # Alertmanager (hil-tests/tests/alertmanager.rs); PostgreSQL
#                               # and the OpenADR VTN openleadr-vtn, built from crates.io
#                               # into $RACKWARDEN_TOOLS (hil-tests/tests/openadr.rs)
set -euo pipefail

# Where --test installs the OpenADR VTN (cargo install --root); the test looks there.
tools="${RACKWARDEN_TOOLS:-$HOME/.cache/rackwarden/tools}"
# openleadr-vtn 0.2.3: the newest release whose schema migrations run on Debian 12's
# PostgreSQL 15 (0.2.4 on need PostgreSQL 16: a subquery without an alias). The agent's
# VEN client is 0.2.8; both speak OpenADR 3.1. --locked: the release's own Cargo.lock
# (0.2.3 does not build against a newer openleadr-wire).
vtn_version=0.2.3

# A PostgreSQL server: on PATH, under /usr/local/bin or Debian's /usr/lib/postgresql.
have_postgres() {
  command -v initdb >/dev/null 2>&1 && return 0
  [ -x /usr/local/bin/initdb ] && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

want=()
command -v protoc >/dev/null 2>&1 || want+=(protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
  command -v etcd >/dev/null 2>&1 || want+=(etcd-server)
  command -v chromium >/dev/null 2>&1 || want+=(chromium)
  command -v promtool >/dev/null 2>&1 || want+=(prometheus)
  command -v prometheus-alertmanager >/dev/null 2>&1 || want+=(prometheus-alertmanager)
  { have_postgres && command -v psql >/dev/null 2>&1; } || want+=(postgresql)
fi

# The VTN, once the system packages are in (a few minutes of build on two cores; kept
# in $tools for later runs on the same machine).
install_vtn() {
  [ "${1:-}" = "--test" ] || return 0
  if [ -x "$tools/bin/openleadr-vtn" ] || command -v openleadr-vtn >/dev/null 2>&1; then
    return 0
  fi
  echo "tools/deps.sh: building openleadr-vtn $vtn_version into $tools" >&2
  cargo install openleadr-vtn --version "$vtn_version" --features internal-oauth --locked \
    --root "$tools" >&2
}

if [ ${#want[@]} -eq 0 ]; then
  install_vtn "${1:-}"
  exit 0
fi

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
    prometheus|prometheus-alertmanager|postgresql) quiet+=("$p") ;;
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
  # postgresql's postinst creates a cluster and, without systemd, may start it through
  # its init script: the OpenADR test runs its own cluster in a temporary directory.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
      $SUDO pg_ctlcluster "$ver" "$name" stop >&2 2>/dev/null || true
    done
  fi
fi
install_vtn "${1:-}"
