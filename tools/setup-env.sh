#!/usr/bin/env bash
# Bootstrap this checkout on a Debian 12 machine, as root: install the distribution
# packages that bindep.txt lists and that are missing, create .venv with the python3 on
# PATH, and install the package (editable) with its test tools into it.
#
# Idempotent: a second run installs nothing and returns in seconds.
#
# Environment:
#   IPMIGRATE_BINDEP_PROFILES  extra bindep profiles, space separated (e.g. "compute")
#   PYTHON                     interpreter for the venv (default: python3)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.ipmigrate-installed"
APT_UPDATED=0

log() { printf '[setup-env] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

apt_lists_present() {
    find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -print -quit 2>/dev/null | grep -q .
}

apt_update() {
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
}

# Install Debian packages; refresh the package lists first only when there are none,
# or when the install fails on lists that may be stale.
apt_install() {
    if [[ $EUID -ne 0 ]]; then
        die "missing Debian packages: $*; run this script as root (sudo $0)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt_lists_present; then
        apt_update
    fi
    # No package's service is started on install (rabbitmq-server, epmd: the tests
    # run private instances): a policy-rc.d that denies, unless one is in place.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# setup-env.sh: start no service during apt-get install\nexit 101\n' \
            >"$policy"
        chmod 0755 "$policy"
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    log "apt-get install $*"
    if ! apt-get install -y -qq "$@"; then
        [[ $APT_UPDATED -eq 0 ]] || die "apt-get install $* failed"
        apt_update
        apt-get install -y -qq "$@"
    fi
    if [[ $own_policy -eq 1 ]]; then
        rm -f "$policy"
        trap - EXIT
    fi
}

# A Debian python3 needs python3-venv for `python3 -m venv`; install it before bindep,
# which itself has to live in the venv.
ensure_venv_module() {
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found on PATH"
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv
    fi
}

ensure_venv() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        return
    fi
    if [[ -e "$VENV" ]]; then
        # Typically the interpreter it was made from is gone; recreate it, but only
        # our own venv (not one we merely cannot run, e.g. root's, as another user).
        [[ -O "$VENV" ]] || die "$VENV exists, is not ours and does not run: remove it"
        log "$VENV does not run: recreating it"
        rm -rf "$VENV"
    fi
    log "creating $VENV with $(command -v "$PYTHON")"
    "$PYTHON" -m venv "$VENV"
}

ensure_bindep() {
    [[ -x "$VENV/bin/bindep" ]] && return
    local spec
    spec=$(sed -n 's/^\(bindep[^ #]*\).*/\1/p' "$ROOT/test-requirements.txt")
    log "installing ${spec:-bindep} into the venv"
    "$VENV/bin/pip" install -q "${spec:-bindep}"
}

install_missing_packages() {
    local profiles=(default)
    local extra
    for extra in ${IPMIGRATE_BINDEP_PROFILES:-}; do
        profiles+=("$extra")
    done
    local missing rc=0
    # bindep exits 1 when packages are missing and prints them one per line.
    missing=$(cd "$ROOT" && "$VENV/bin/bindep" -b "${profiles[@]}") || rc=$?
    if [[ $rc -gt 1 ]]; then
        die "bindep failed (exit $rc)"
    fi
    if [[ -n "$missing" ]]; then
        local packages
        mapfile -t packages <<<"$missing"
        apt_install "${packages[@]}"
    else
        log "all Debian packages from bindep.txt are installed"
    fi
}

install_python_packages() {
    local stamp
    stamp=$(cd "$ROOT" && cat setup.cfg setup.py pyproject.toml requirements.txt \
        test-requirements.txt | sha256sum | cut -d' ' -f1)
    stamp="$stamp $("$VENV/bin/python" -V 2>&1)"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$stamp" ]] \
        && "$VENV/bin/python" -c 'import nova_ipmigrate' 2>/dev/null; then
        log "python packages are up to date"
        return
    fi
    log "pip install -e .[nova,client] -r test-requirements.txt"
    (cd "$ROOT" && "$VENV/bin/pip" install -q -e '.[nova,client]' -r test-requirements.txt)
    # compute_driver = ipmigrate.driver.IPMigrateLibvirtDriver: Nova imports
    # nova.virt.<compute_driver>; a .pth alias maps nova.virt.ipmigrate to
    # nova_ipmigrate.virt (an editable install ships no data files)
    "$VENV/bin/python" -m nova_ipmigrate.virt.alias install
    printf '%s\n' "$stamp" >"$STAMP"
}

ensure_venv_module
ensure_venv
ensure_bindep
install_missing_packages
install_python_packages
log "ready: $VENV"
