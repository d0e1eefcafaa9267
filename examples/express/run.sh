#!/usr/bin/env bash
# The Express example against a running sidecar (`make run` at the repository's root):
#   ./examples/express/run.sh            # http://127.0.0.1:8002
# Environment: PORT (8002), SIDECAR_URL (http://127.0.0.1:8080), SIDECAR_SERVICE_TOKEN (default:
# the sidecar's .data/service_token). Installs its dependencies (npm ci) on first run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
stamp="$here/node_modules/.package-lock.json"
if [ ! -f "$stamp" ] || [ "$here/package-lock.json" -nt "$stamp" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --silent)
fi
export SIDECAR_URL=${SIDECAR_URL:-http://127.0.0.1:8080}
if [ -z "${SIDECAR_SERVICE_TOKEN:-}" ]; then
  SIDECAR_SERVICE_TOKEN=$(cat "$root/.data/service_token") || {
    echo "no .data/service_token: start the sidecar first (make run)" >&2
    exit 1
  }
  export SIDECAR_SERVICE_TOKEN
fi
cd "$here"
exec node server.js
