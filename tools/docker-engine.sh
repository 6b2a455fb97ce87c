#!/usr/bin/env bash
# A real Docker engine on a Debian 12 machine without a container registry (../shared/docker-engine.md):
# Debian's docker.io + docker-compose, dockerd started by hand with host networking only and its state
# under /tmp, and a base image made by debootstrap + docker import. Every command is idempotent.
#   install  apt-get docker.io docker-compose debootstrap (root; only what is missing)
#   start    start dockerd unless an engine already answers; prints "started" or "running"
#   base     debootstrap bookworm and import it as $PMSTORE_BASE_IMAGE (skipped when the image exists)
#   stop     stop the dockerd that `start` started (TERM, wait), unmount its netns, remove its state
#   status   exit 0 when an engine answers
set -euo pipefail

STATE=${PMSTORE_DOCKER_STATE:-/tmp/pmstore-docker}       # data-root, exec-root, pidfile, log, rootfs
BASE_IMAGE=${PMSTORE_BASE_IMAGE:-local/debian:bookworm}
PACKAGES="docker.io docker-compose debootstrap"
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"        # Debian's docker CLI (20.10) matches its daemon

say() { echo "docker-engine: $*" >&2; }
die() { say "$*"; exit 1; }
answers() { docker info >/dev/null 2>&1; }

cmd_install() {
  local missing="" p
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && { say "packages present"; return 0; }
  [ "$(id -u)" = 0 ] || die "missing packages:$missing (needs root: apt-get install$missing)"
  command -v apt-get >/dev/null || die "missing packages:$missing and no apt-get"
  say "installing$missing"
  apt-get update -qq
  # no systemd here: the postinst's "policy-rc.d denied execution of start" is expected
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

cmd_start() {
  if answers; then echo running; return 0; fi
  [ "$(id -u)" = 0 ] || die "dockerd needs root"
  command -v dockerd >/dev/null || die "no dockerd (run: $0 install)"
  mkdir -p "$STATE/data" "$STATE/exec"
  # host networking only: no bridge, no iptables; overlay2 on the root filesystem
  setsid dockerd --data-root="$STATE/data" --exec-root="$STATE/exec" --pidfile="$STATE/dockerd.pid" \
    --storage-driver=overlay2 --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
    --host=unix:///var/run/docker.sock >"$STATE/dockerd.log" 2>&1 </dev/null &
  local i
  for i in $(seq 1 150); do
    if answers; then echo started; return 0; fi
    kill -0 $! 2>/dev/null || break
    sleep 0.2
  done
  tail -n 20 "$STATE/dockerd.log" >&2 || true
  die "dockerd did not answer (log: $STATE/dockerd.log)"
}

# slim ROOTFS -- what debian:bookworm-slim does: no docs, man pages or translations (now or from
# later apt installs), no service starts from maintainer scripts, no apt caches
slim() {
  local r=$1
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/groff/* "$r"/usr/share/info/* "$r"/usr/share/lintian/* \
    "$r"/usr/share/linda/* "$r"/usr/share/locale/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
    "$r"/var/lib/apt/lists/* "$r"/var/log/*.log
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 755 "$r/usr/sbin/policy-rc.d"
}

cmd_base() {
  answers || die "no engine (run: $0 start)"
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then say "$BASE_IMAGE present"; return 0; fi
  command -v debootstrap >/dev/null || die "no debootstrap (run: $0 install)"
  local mirror rootfs="$STATE/rootfs"
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rm -rf "$rootfs"
  say "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$STATE/debootstrap.log" >&2; die "debootstrap failed"; }
  slim "$rootfs"
  tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  say "imported $BASE_IMAGE"
}

cmd_stop() {
  local pidf="$STATE/dockerd.pid" p
  if [ -f "$pidf" ]; then
    p=$(cat "$pidf")
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p"
      for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$p" 2>/dev/null && die "dockerd $p still running after 30 s"
    fi
  fi
  # dockerd leaves its default netns bind-mounted under the exec-root
  if mountpoint -q "$STATE/exec/netns/default" 2>/dev/null; then umount "$STATE/exec/netns/default"; fi
  rm -rf "$STATE"
  say "stopped"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  base) cmd_base ;;
  stop) cmd_stop ;;
  status) answers ;;
  *) echo "usage: $0 install|start|base|stop|status" >&2; exit 2 ;;
esac
