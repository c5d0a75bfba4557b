#!/usr/bin/env bash
# Lint, type checks, unit and integration tests: what CI runs (.ci/run).
#
# Usage: tools/run-tests.sh [--quick|--full] [--unit-only]
#   --quick      CI mode: exports IPMIGRATE_QUICK=1, tests shorten their runs
#                (the default when CI=true)
#   --full       the opposite of --quick
#   --unit-only  skip the integration tests
#
# Integration tests need root; as another user they fail the run unless
# IPMIGRATE_SKIP_INTEGRATION=1. IPMIGRATE_SKIP_INTEGRATION=1 skips them as root too.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/.venv/bin"

usage() { sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

quick=${IPMIGRATE_QUICK:-}
if [[ -z "$quick" ]]; then
    if [[ ${CI:-} == true ]]; then quick=1; else quick=0; fi
fi
unit_only=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) quick=1 ;;
        --full) quick=0 ;;
        --unit-only) unit_only=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; printf 'unknown option: %s\n' "$1" >&2; exit 2 ;;
    esac
    shift
done
export IPMIGRATE_QUICK=$quick

"$ROOT/tools/setup-env.sh"
cd "$ROOT"

summary=()
failed=0

# run_step NAME COMMAND...: run one step, record PASS/FAIL and its duration.
run_step() {
    local name=$1
    shift
    printf '\n==> %s: %s\n' "$name" "$*"
    local start=$SECONDS rc=0
    "$@" || rc=$?
    local took=$((SECONDS - start))
    if [[ $rc -eq 0 ]]; then
        summary+=("PASS  $name (${took}s)")
    else
        summary+=("FAIL  $name (exit $rc, ${took}s)")
        failed=1
    fi
}

skip_step() {
    printf '\n==> %s: skipped (%s)\n' "$1" "$2"
    summary+=("SKIP  $1 ($2)")
}

fail_step() {
    printf '\n==> %s: FAILED: %s\n' "$1" "$2" >&2
    summary+=("FAIL  $1 ($2)")
    failed=1
}

# pytest exits 5 when it collected no test: a suite that runs nothing is a failure.
run_pytest() {
    local rc=0
    "$BIN/pytest" "$@" || rc=$?
    if [[ $rc -eq 5 ]]; then
        printf 'ERROR: pytest collected no tests (%s): treated as a failure\n' "$*" >&2
    fi
    return "$rc"
}

run_step "ruff" "$BIN/ruff" check .
run_step "mypy" "$BIN/mypy" nova_ipmigrate
run_step "unit tests" run_pytest --durations=15 tests/unit
# Nova's side in processes of their own, in Nova's native threading mode
# (tests/nova/__init__.py): unit tests, then the functional tests on Nova's
# fixtures (testtools-based, run by stestr as Nova runs them; stestr fails a run
# that found no test)
run_step "nova unit tests" run_pytest tests/nova/unit
run_step "nova functional tests" env OS_STDOUT_CAPTURE=1 OS_STDERR_CAPTURE=1 OS_LOG_CAPTURE=1 "$BIN/stestr" run

if [[ $unit_only -eq 1 ]]; then
    skip_step "integration tests" "--unit-only"
elif [[ ${IPMIGRATE_SKIP_INTEGRATION:-0} == 1 ]]; then
    skip_step "integration tests" "IPMIGRATE_SKIP_INTEGRATION=1"
elif [[ $EUID -ne 0 ]]; then
    fail_step "integration tests" \
        "they need root (FUSE, QEMU, namespaces): run with sudo, or set IPMIGRATE_SKIP_INTEGRATION=1"
else
    run_step "integration tests" run_pytest -m integration --durations=25 tests/integration
fi

printf '\n==> summary (IPMIGRATE_QUICK=%s)\n' "$IPMIGRATE_QUICK"
printf '    %s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
    printf 'run-tests: FAILED\n'
    exit 1
fi
printf 'run-tests: OK\n'
