"""`powerplane`: one CLI for everything a user runs. Errors are one readable line saying what to do."""

# One module per group of commands, each adding its subcommands with `register`; this module only builds
# the top-level parser and runs the chosen handler. Handlers import what they need when they run, so that
# `powerplane --help` and the light commands start fast.

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from ops.cli import analysis, dr, jobs, recordings, services, setup, shadow, status, traces
from ops.cli.common import FAILURE, USAGE, CliError

if TYPE_CHECKING:
    from powerplane.validation import ConfigError


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("kafka", "aiokafka", "faust", "mode", "urllib3", "influxdb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # kafka-python logs every failed connection attempt; our own code reports the outcome in one line
        # (and it cannot decode faust's assignor metadata, which it mentions on every describe).
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


EPILOG = """exit codes:
  0  ok
  1  failure: the command could not do its work (no data, a server unreachable, records not delivered)
  2  usage or configuration error: a wrong option, setting (PP_*), config, site or recording file

Errors are one line on stderr. With -o json, stdout holds one JSON document and nothing else."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("powerplane")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="powerplane", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"powerplane {_version()}")
    p.add_argument("--config", help="TOML config file (default: $PP_CONFIG; every key also as PP_<KEY>)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for group in (setup, services, recordings, analysis, shadow, dr, jobs, traces, status):  # in this order in --help
        group.register(sub)
    return p


def _config_error(e: ConfigError) -> None:
    """One line for one mistake; a list under a heading when a file has several (all at once)."""
    what = f"invalid {e.source or 'configuration'}"
    if len(e.errors) == 1:
        print(f"powerplane: {what}: {e.errors[0]}", file=sys.stderr)
        return
    print(f"powerplane: {what}: {len(e.errors)} error(s)", file=sys.stderr)
    for line in e.errors:
        print(f"  {line}", file=sys.stderr)


# The Kafka role (powerplane.access) of each command's clients; every other command reads as `ops`. A stage
# that runs several roles in one process (the fleet: collector and actuator) names each client's role.
ROLES = {"fleet": "collector", "collect": "collector", "traps": "collector", "streams": "streams",
         "controller": "controller", "actuate": "actuator", "sink": "sink", "replay": "admin", "dev": "admin"}


def kafka_role(args: argparse.Namespace) -> str:
    """replay writes any topic and `topics create` makes topics and ACLs: both need the admin credential;
    `controller --shadow` runs as the shadow role."""
    if args.cmd == "topics" and getattr(args, "action", "") == "create":
        return "admin"
    if args.cmd == "controller" and getattr(args, "shadow", False):
        return "shadow"  # may write pp.shadow only: the broker refuses it pp.commands
    if args.cmd == "dr" and getattr(args, "action", "") in ("request", "cancel", "gateway"):
        return "grid"  # the utility's gateway: may write pp.grid only
    if args.cmd == "job" and getattr(args, "action", "") == "notice":
        return "scheduler"  # the scheduler's prolog: may write pp.jobs only
    return ROLES.get(args.cmd, "ops")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    _setup_logging(args.verbose)
    from ops.devservers import DevError
    from powerplane.config import ignored_env, load_config
    from powerplane.kafka import BrokerUnavailable, client_auth, set_process_auth
    from powerplane.validation import ConfigError

    try:
        cfg = load_config(args.config)
        set_process_auth(lambda: client_auth(cfg, kafka_role(args)))
        for line in ignored_env():
            print(f"powerplane: note: {line}", file=sys.stderr)
        return int(args.fn(args, cfg))
    except ConfigError as e:  # every mistake of a file (site, scenario, config, ...), one line each
        _config_error(e)
        return USAGE
    except CliError as e:
        print(f"powerplane: error: {e}", file=sys.stderr)
        return e.code
    except BrokerUnavailable as e:  # a server unreachable: the command could not work, the call was right
        print(f"powerplane: error: {e}", file=sys.stderr)
        return FAILURE
    except (DevError, FileNotFoundError, ValueError) as e:
        print(f"powerplane: error: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130
