"""Options of the [memfs] group: the FUSE filesystem that serves guest RAM."""

from __future__ import annotations

from oslo_config import cfg

from nova_ipmigrate.conf import paths

memfs_group = cfg.OptGroup(
    name="memfs",
    title="memfs options",
    help="The FUSE filesystem, served by the nova-ipmigrate agent, whose files are the "
    "guest RAM of the instances on this host.",
)

MEMFS_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "mountpoint",
        default=paths.state_path_def("memfs"),
        help="Where memfs is mounted. libvirt's memory_backing_dir (qemu.conf) must "
        "point here so that each instance's RAM file lives on memfs.",
    ),
    cfg.StrOpt(
        "control_socket",
        default=paths.state_path_def("memfs.sock"),
        help="Unix socket on which the memfs daemon accepts control requests "
        "(resident limits, statistics, shutdown).",
    ),
    cfg.IntOpt(
        "reader_threads",
        default=2,
        min=2,
        help="Number of threads that read and answer FUSE requests. At least two: one "
        "must always be free to answer the WRITEs the kernel sends while laundering "
        "pages, or a thread blocked in a page-in can deadlock the mount.",
    ),
    cfg.IntOpt(
        "max_readahead_kb",
        default=0,
        min=0,
        max=1024,
        help="Prefetch window (KiB) announced to the kernel in FUSE INIT. 0 makes every "
        "page-in read exactly one 4 KiB page.",
    ),
    cfg.BoolOpt(
        "block_thp_readahead",
        default=True,
        help="Run QEMU with the LD_PRELOAD shim that ignores madvise(MADV_HUGEPAGE) "
        "on guest RAM. The kernel's VM_HUGEPAGE fault path reads ahead 2 MiB of a FUSE "
        "file even when readahead is off, which defeats one-page page-ins.",
    ),
    cfg.IntOpt(
        "default_resident_limit_mb",
        default=0,
        min=0,
        help="Resident limit (MiB) of a RAM file for which none was set explicitly. "
        "0 means unlimited.",
    ),
    cfg.StrOpt(
        "victim_policy",
        default="recency",
        help="How the evictor chooses the pages to page out when a RAM file is over its "
        "resident limit: the name of a plugin in the nova_ipmigrate.victim_policy "
        "entry-point namespace, checked when the daemon starts. Built-in: 'recency' "
        "(least recently paged-in first; pages that fault back soon after a page-out "
        "get a second chance) and 'random' (random resident pages, for comparison "
        "only).",
    ),
    cfg.IntOpt(
        "page_store_mb",
        default=4096,
        min=1,
        help="Capacity (MiB) of the local page store that holds paged-out pages.",
    ),
    cfg.IntOpt(
        "eviction_batch_pages",
        default=256,
        min=1,
        help="Maximum number of pages evicted from a RAM file in one batch.",
    ),
    cfg.IntOpt(
        "eviction_target_pct",
        default=90,
        min=10,
        max=100,
        help="When a RAM file exceeds its resident limit, evict pages until it is down "
        "to this percentage of the limit, so that eviction does not run on every "
        "page-in.",
    ),
    cfg.BoolOpt(
        "pin_resident_pages",
        default=True,
        help="mlock resident pages in the daemon's own mapping, so that memory-cgroup "
        "reclaim cannot drop the only copy of a guest page.",
    ),
    cfg.BoolOpt(
        "tune_bdi",
        default=True,
        help="After mounting, set the FUSE bdi's strict_limit=0 and max_ratio=100 so "
        "that the kernel does not write guest RAM back continuously.",
    ),
    cfg.IntOpt(
        "shutdown_timeout",
        default=10,
        min=0,
        help="Seconds to wait at shutdown for users of memfs to go away before the "
        "FUSE connection is aborted through fusectl.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(memfs_group)
    conf.register_opts(MEMFS_OPTS, group=memfs_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(memfs_group, MEMFS_OPTS)]
