#!/usr/bin/env bash
# Make sure a Debian package's commands exist, idempotently: ensure-debian.sh PACKAGE COMMAND...
# Used for Prometheus (prometheus promtool) and HAProxy (haproxy): `make test` runs both, as
# the monitoring and cluster tests start real ones. Debian's packages would start system
# services; maas runs its own instances (`maas monitor`, `maas cluster`) on free loopback ports.
set -euo pipefail
package=$1; shift
missing=()
for cmd in "$@"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$package: $(command -v "$1")"; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$package: ${missing[*]} not found and no apt-get here; install $package so that $* are on PATH" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
echo "$package: installing Debian's $package"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$package" >/dev/null
for cmd in "$@"; do command -v "$cmd"; done
