"""`powerplane`: one CLI for everything a user runs. Errors are one readable line saying what to do."""

# One module per group of commands, each adding its subcommands with `register`; this module only builds
# the top-level parser and runs the chosen handler. Handlers import what they need when they run, so that
# `powerplane --help` and the light commands start fast.

from __future__ import annotations

import argparse
import logging
import sys

from ops.cli import analysis, recordings, services, setup


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("kafka", "aiokafka", "faust", "mode", "urllib3", "influxdb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # kafka-python logs every failed connection attempt; our own code reports the outcome in one line
        # (and it cannot decode faust's assignor metadata, which it mentions on every describe).
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="powerplane", description=__doc__)
    p.add_argument("--config", help="TOML config file (default: $PP_CONFIG; every key also as PP_<KEY>)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for group in (setup, services, recordings, analysis):  # in this order in --help
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from ops.devservers import DevError
    from powerplane.config import load_config
    from powerplane.kafka import BrokerUnavailable
    from powerplane.validation import ConfigError

    try:
        cfg = load_config(args.config)
        return int(args.fn(args, cfg))
    except ConfigError as e:  # every mistake of a file (site, scenario, config, ...), one indented line each
        print(f"powerplane: invalid {e.source or 'configuration'}: {len(e.errors)} error(s)", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    except (DevError, BrokerUnavailable, FileNotFoundError, ValueError) as e:
        print(f"powerplane: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

