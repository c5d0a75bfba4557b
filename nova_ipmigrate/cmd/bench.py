"""``ipmigrate-bench``: run one benchmark of BENCHMARKS.md; prints JSON and a summary.

One subcommand per benchmark; ``--quick`` is the small configuration CI runs
so that a benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import sys

from nova_ipmigrate.bench import fabric, mainhost, migration
from nova_ipmigrate.cmd.daemon import exit_on_sigterm


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipmigrate-bench",
        description="Benchmarks of nova-ipmigrate. Each reports ratios measured side by "
        "side in the same run (JSON on stdout, a summary on stderr).")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    fabric_parser = benchmarks.add_parser(
        "fabric", help="B5: fabric bulk throughput vs plain TCP; page-in latency",
        description=fabric.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fabric.add_arguments(fabric_parser)
    fabric_parser.set_defaults(run=fabric.main)
    migration_parser = benchmarks.add_parser(
        "migration", help="B2/B3/B6: partial migration and reintegration of a split VM "
        "vs the link's limit and vs naive; guest progress meanwhile (lab, root)",
        description=migration.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    migration.add_arguments(migration_parser)
    migration_parser.set_defaults(run=migration.main)
    mainhost_parser = benchmarks.add_parser(
        "mainhost", help="B4: main-host partial migration (libvirt, x-ignore-shared) vs a "
        "plain libvirt live migration of the same VM (lab, root)",
        description=mainhost.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mainhost.add_arguments(mainhost_parser)
    mainhost_parser.set_defaults(run=mainhost.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    exit_on_sigterm()
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
