#!/bin/sh
# Installs what `make install` needs from Debian when it is missing: a C compiler, the
# Python headers and venv. Runs apt-get only when something is missing and we are root.
set -e
PY=${PYTHON:-python3}
missing=""
command -v gcc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
$PY -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing="$missing python3-dev"
$PY -c 'import venv, ensurepip' 2>/dev/null || missing="$missing python3-venv"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages:$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
  echo "missing system packages:$missing -- install them (e.g. sudo apt-get install$missing)" >&2
  exit 1
fi
