#!/bin/sh
# Render nginx.conf from the environment (only the PMSTORE_* names: nginx's own $uri etc.
# stay as they are), then run nginx in the foreground as this container's main process.
set -eu
mkdir -p /tmp/nginx
envsubst '${PMSTORE_NGINX_HOST} ${PMSTORE_NGINX_PORT} ${PMSTORE_SHARD1} ${PMSTORE_SHARD2} ${PMSTORE_SHARD3}' \
  </etc/nginx/pmstore.conf.template >/tmp/nginx/nginx.conf
exec nginx -e stderr -c /tmp/nginx/nginx.conf -g 'daemon off;'
