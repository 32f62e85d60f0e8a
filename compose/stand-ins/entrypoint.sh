#!/bin/sh
# The part of the official nginx image's entrypoint that compose relies on: when the command is nginx,
# /etc/nginx/templates/*.template are rendered with envsubst into NGINX_ENVSUBST_OUTPUT_DIR, replacing only
# the variables whose names NGINX_ENVSUBST_FILTER matches (nginx's own $variables stay as they are).
set -eu
if [ "${1:-}" = nginx ] && [ -d /etc/nginx/templates ]; then
  out="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
  names=$(env | cut -d= -f1 | grep -E "${NGINX_ENVSUBST_FILTER:-.}" | sed 's/.*/${&}/' | tr '\n' ' ')
  for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    envsubst "$names" <"$template" >"$out/$(basename "$template" .template)"
  done
fi
exec "$@"
