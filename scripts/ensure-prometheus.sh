#!/usr/bin/env bash
# Make sure Prometheus and promtool exist (Debian's `prometheus` package), idempotently.
# Used by `make monitor` and `make test` (the monitoring tests run a real Prometheus).
# Debian's package would start a system service; maas runs its own instance instead
# (`maas monitor start`), so the service is left as the package leaves it.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "prometheus: $(command -v prometheus)"; exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "prometheus: not found and no apt-get here; install Prometheus 2.x (prometheus, promtool) on PATH" >&2
  exit 1
fi
echo "prometheus: installing Debian's prometheus"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus && command -v promtool
