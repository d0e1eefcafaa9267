#!/usr/bin/env bash
# The FastAPI example against a running sidecar (`make run` at the repository's root):
#   ./examples/fastapi/run.sh            # http://127.0.0.1:8001
# Environment: PORT (8001), SIDECAR_URL (http://127.0.0.1:8080), SIDECAR_SERVICE_TOKEN (default:
# the sidecar's .data/service_token).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
make -s -C "$root" setup  # the venv, with the sidecar and the Python client (editable)
export SIDECAR_URL=${SIDECAR_URL:-http://127.0.0.1:8080}
if [ -z "${SIDECAR_SERVICE_TOKEN:-}" ]; then
  SIDECAR_SERVICE_TOKEN=$(cat "$root/.data/service_token") || {
    echo "no .data/service_token: start the sidecar first (make run)" >&2
    exit 1
  }
  export SIDECAR_SERVICE_TOKEN
fi
exec "$root/.venv/bin/uvicorn" app:app --app-dir "$here" --host 127.0.0.1 --port "${PORT:-8001}" \
  --no-access-log
