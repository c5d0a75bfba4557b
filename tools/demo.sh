#!/usr/bin/env bash
# The on-one-machine lab demo: bootstraps the checkout (tools/setup-env.sh), then runs
# ipmigrate-demo with the given arguments (see ipmigrate-demo --help). Needs root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/tools/setup-env.sh"
exec "$ROOT/.venv/bin/ipmigrate-demo" "$@"
