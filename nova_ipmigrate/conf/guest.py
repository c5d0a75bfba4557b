"""Options of the [guest] group: the lab guest (kernel, initramfs, QEMU) used by the
demo and the integration tests."""

from __future__ import annotations

from oslo_config import cfg

from nova_ipmigrate.conf import paths

guest_group = cfg.OptGroup(
    name="guest",
    title="Lab guest options",
    help="How the lab guest (kernel, initramfs with the memory oracle) is built and run.",
)

GUEST_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "cache_dir",
        default=paths.state_path_def("cache"),
        help="Directory holding the built guest kernel, initramfs and shims.",
    ),
    cfg.StrOpt(
        "kernel_package",
        default="linux-image-amd64",
        help="Debian package whose kernel boots the lab guest.",
    ),
    cfg.StrOpt(
        "qemu_binary",
        default="qemu-system-x86_64",
        help="QEMU system emulator that runs the lab guest (a name looked up on PATH, "
        "or an absolute path).",
    ),
    cfg.StrOpt(
        "accel",
        default="tcg",
        help="QEMU accelerator for the lab guest: use kvm in production; tcg where KVM "
        "is not available.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(guest_group)
    conf.register_opts(GUEST_OPTS, group=guest_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(guest_group, GUEST_OPTS)]
