# shellcheck shell=bash
# plugin.sh: devstack plugin entry point for nova-ipmigrate; devstack sources it with
# the phase as arguments ("stack install", "unstack", "clean", ...).

# Save trace setting
_XTRACE_IPMIGRATE_PLUGIN=$(set +o | grep xtrace)
set -o xtrace

# shellcheck source=devstack/lib/ipmigrate
source "$IPMIGRATE_DIR/devstack/lib/ipmigrate"

if is_service_enabled ipmigrate; then
    if [[ "$1" == "stack" && "$2" == "pre-install" ]]; then
        echo_summary "nova-ipmigrate: nothing to do before install"
    elif [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing nova-ipmigrate"
        install_ipmigrate
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        echo_summary "Configuring nova-ipmigrate"
        configure_ipmigrate
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        echo_summary "Initializing and starting nova-ipmigrate"
        init_ipmigrate
        start_ipmigrate
    fi

    if [[ "$1" == "unstack" ]]; then
        stop_ipmigrate
    fi

    if [[ "$1" == "clean" ]]; then
        cleanup_ipmigrate
    fi
fi

# Restore xtrace
$_XTRACE_IPMIGRATE_PLUGIN
