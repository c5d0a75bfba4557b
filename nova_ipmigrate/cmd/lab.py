"""``ipmigrate-lab``: the multi-host lab on one machine.

  ipmigrate-lab up --hosts N [--link 1gbit]   create hosts h1..hN (namespaces, bridge, tc)
  ipmigrate-lab down                          remove everything, also after a crash
  ipmigrate-lab status [--json]               what exists: hosts, addresses, links, processes
  ipmigrate-lab exec HOST -- CMD...           run CMD inside host HOST (h1, 1 or <prefix>-h1)
  ipmigrate-lab boot --hosts 4 --scenario full  a split VM and every part move on it, with
                                              progress bars and memory maps (own lab)

Options come from the [lab] group (state_dir, prefix, subnet, default_link).
Exit status: 0 done, 1 the lab operation failed (or down left something
behind), 2 bad usage; exec exits with the command's status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from oslo_config import cfg

from nova_ipmigrate import conf
from nova_ipmigrate.cmd.daemon import exit_on_sigterm
from nova_ipmigrate.lab.hosts import Lab, LabError
from nova_ipmigrate.lab.shaping import RateError, normalize_link

CONF = conf.CONF
PROG = "ipmigrate-lab"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", action="append", default=[],
                    help="nova-ipmigrate configuration file(s)")
    ap.add_argument("--prefix", default=None,
                    help="lab name prefix (default: [lab] prefix)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_up = sub.add_parser("up", help="create the lab's hosts")
    p_up.add_argument("--hosts", type=int, required=True, metavar="N",
                      help="number of hosts")
    p_up.add_argument("--link", default=None, metavar="RATE",
                      help="tc rate of each host's link, both directions (e.g. 1gbit, "
                           "100mbit; 'none': unshaped; default: [lab] default_link)")
    sub.add_parser("down", help="remove everything the lab created")
    p_status = sub.add_parser("status", help="show what exists")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_boot = sub.add_parser(
        "boot", help="boot the oracle guest as a split-memory instance across N hosts "
        "(a lab of its own: up, an agent per host, the guest, down)")
    p_boot.add_argument("--hosts", type=int, default=3, metavar="N")
    p_boot.add_argument("--ram-mb", type=int, default=512)
    p_boot.add_argument("--limit-pct", type=int, default=25)
    p_boot.add_argument("--seconds", type=int, default=60)
    p_boot.add_argument("--link", default=None, metavar="RATE")
    p_boot.add_argument("--split-after", type=float, default=None, metavar="S",
                        help="boot a normal VM, split it S seconds after the oracle filled "
                             "its memory (split migration)")
    p_boot.add_argument("--sub-hosts", type=int, default=None, metavar="N",
                        help="sub-hosts the VM starts with; the other hosts are spares")
    p_boot.add_argument("--scenario", default=None,
                        choices=["sub-host-moves", "drain-reintegrate",
                                 "main-host-moves", "full", "engine-failures",
                                 "operator-cli"],
                        help="run part moves while the guest runs, with progress bars "
                             "(see ipmigrate-demo --help; needs 4 hosts)")
    p_boot.add_argument("--no-libvirt", action="store_true",
                        help="the guest as a QEMU started directly, not a libvirt domain")
    p_boot.add_argument("--no-control-plane", action="store_true",
                        help="no RabbitMQ and engine on h1: operations are asked of the "
                             "agents directly")
    p_exec = sub.add_parser("exec", help="run a command inside a host")
    p_exec.add_argument("host", help="h1, 1 or <prefix>-h1")
    p_exec.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    return ap


def _error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    exit_on_sigterm()
    conf_args: list[str] = []
    for f in args.config_file:
        conf_args += ["--config-file", f]
    if args.command == "boot":
        from nova_ipmigrate.cmd import demo
        extra = ["--link", args.link] if args.link else []
        if args.split_after is not None:
            extra += ["--split-after", str(args.split_after)]
        if args.sub_hosts is not None:
            extra += ["--sub-hosts", str(args.sub_hosts)]
        if args.scenario is not None:
            extra += ["--scenario", args.scenario]
        if args.no_control_plane:
            extra.append("--no-control-plane")
        if args.no_libvirt:
            extra.append("--no-libvirt")
        return demo.main([*conf_args, "--hosts", str(args.hosts), "--ram-mb", str(args.ram_mb),
                          "--limit-pct", str(args.limit_pct), "--seconds", str(args.seconds),
                          *extra])
    try:
        CONF(conf_args, project="nova-ipmigrate", default_config_files=[])
        lab = Lab.from_conf(CONF, prefix=args.prefix)
    except (cfg.Error, LabError) as exc:
        _error(str(exc))
        return 2
    if args.command == "exec":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            ap.print_usage(sys.stderr)
            _error("exec needs a command: exec HOST -- CMD [ARG...]")
            return 2
        args.cmd = cmd
    if args.command != "status" and os.geteuid() != 0:
        _error(f"{args.command} needs root (namespaces, mounts, tc)")
        return 1
    try:
        return _COMMANDS[args.command](lab, args)
    except (LabError, RateError) as exc:
        _error(str(exc))
        return 1


def _up(lab: Lab, args: argparse.Namespace) -> int:
    if args.hosts < 1:
        _error("--hosts must be at least 1")
        return 2
    try:
        link = normalize_link(CONF.lab.default_link if args.link is None else args.link)
    except RateError as exc:
        _error(str(exc))
        return 2
    hosts = lab.up(args.hosts, link)
    print(f"lab {lab.prefix}: {len(hosts)} hosts up, links {link or 'unshaped'} "
          f"(state {lab.state_file})")
    for h in hosts:
        print(f"  {h.name}  {h.hostname:<16} {h.address}/{h.prefixlen}  state {h.state_dir}")
    print(f"run a command in a host: {PROG} exec h1 -- ip addr")
    return 0


def _down(lab: Lab, args: argparse.Namespace) -> int:
    report = lab.down()
    print(report.summary(lab.prefix))
    return 1 if report.leftovers else 0


def _status(lab: Lab, args: argparse.Namespace) -> int:
    status = lab.status()
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        print(status.summary())
    return 0


def _exec(lab: Lab, args: argparse.Namespace) -> int:
    command = lab.host(args.host).enter_command(args.cmd)
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)  # the command's own status becomes ours
    except OSError as exc:
        _error(f"cannot run {command[0]}: {exc}")
    return 1


_COMMANDS = {"up": _up, "down": _down, "status": _status, "exec": _exec}


if __name__ == "__main__":
    sys.exit(main())
