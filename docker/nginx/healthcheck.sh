#!/bin/bash
# Container health probe for the gateway: GET /healthz on its own listener (bash /dev/tcp: no curl).
host=${PMSTORE_NGINX_HOST:-127.0.0.1}
[ "$host" = 0.0.0.0 ] && host=127.0.0.1
exec 3<>"/dev/tcp/$host/${PMSTORE_NGINX_PORT:-8090}" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t 2 status <&3 || exit 1
case "$status" in *" 200 "*) exit 0 ;; *) echo "$status" >&2; exit 1 ;; esac
