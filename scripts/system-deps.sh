#!/usr/bin/env bash
# Installs the system packages the tests use, when they are missing (apt-get, as root):
# redis-server (the tests' Redis), redis-cli (it joins the tests' Redis Cluster), nginx and
# caddy (the end-to-end proxy tests), chromium (the console test drives it).
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || command -v valkey-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]}; install them (apt-get install ${need[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
# The packages start system services; the tests run their own processes on free ports.
for svc in "${need[@]}"; do
  [ "$svc" = redis-tools ] || [ "$svc" = chromium ] && continue
  service "$svc" stop >/dev/null 2>&1 || true
done
