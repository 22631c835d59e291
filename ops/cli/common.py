"""What the command modules share: the logger, stopping on SIGTERM/SIGINT, the site and the keyring of a
config, the exit codes and `--output json`. Underscored as in the handlers they serve: not for use outside
ops.cli."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from powerplane.config import Config

log = logging.getLogger("powerplane")

# Exit codes (the epilog of `powerplane --help` and the README list them).
OK, FAILURE, USAGE = 0, 1, 2


class CliError(Exception):
    """A mistake or a failure the CLI reports in one line and exits with `code`."""

    code = FAILURE


class UsageError(CliError):
    """A wrong option, setting or file: exit 2."""

    code = USAGE


class Failure(CliError):
    """The command could not do its work (no data, a server unreachable): exit 1."""

    code = FAILURE


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["table", "json"], default="table",
                   help="table (default) or json: one JSON document on stdout, nothing else there")


def _json_safe(x: Any) -> Any:
    """JSON has no NaN or Infinity: a missing or unbounded number is null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def _emit_json(doc: Any) -> None:
    json.dump(_json_safe(doc), sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")


def _check_port_free(port: int, option: str = "--metrics-port", host: str = "127.0.0.1") -> None:
    """Refuse a taken port (or a host that is not this machine's) before anything starts, in one line (not a
    traceback from the HTTP server). `option` is what the user wrote, named in the message."""
    if not port:
        return
    try:
        family, kind, _, _, sockaddr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UsageError(f"{option}: cannot listen on {host}:{port} ({e.strerror or e}): not an address of "
                         "this machine") from None
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server will: TIME_WAIT is free
        try:
            s.bind(sockaddr)
        except OSError as e:
            hint = ("the port is in use; choose another" if e.errno == errno.EADDRINUSE
                    else "choose another address or port")
            raise UsageError(f"{option}: cannot listen on {host}:{port} ({e.strerror or e}): {hint}") from None


def _add_metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-addr", metavar="HOST:PORT",
                   help="serve Prometheus /metrics there (0.0.0.0:PORT or :PORT: every interface, as in compose)")
    p.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="deprecated: the same as --metrics-addr 127.0.0.1:PORT")


def _metrics_addr(args: argparse.Namespace) -> tuple[str, int] | None:
    """Where to serve /metrics (None: nowhere), checked free; a malformed or taken address is one line (exit 2)."""
    from powerplane.metrics import parse_addr

    if args.metrics_addr and args.metrics_port:
        raise UsageError("--metrics-addr and --metrics-port: give one (--metrics-port P is 127.0.0.1:P)")
    if args.metrics_port:
        if not 0 < args.metrics_port < 65536:
            raise UsageError(f"--metrics-port {args.metrics_port}: expected a port 1-65535")
        _check_port_free(args.metrics_port, f"--metrics-port {args.metrics_port}")
        return "127.0.0.1", args.metrics_port
    if not args.metrics_addr:
        return None
    try:
        addr = parse_addr(args.metrics_addr)
    except ValueError as e:
        raise UsageError(f"--metrics-addr {e}") from None
    _check_port_free(addr[1], f"--metrics-addr {args.metrics_addr}", addr[0])
    return addr


def _serve_metrics(addr: tuple[str, int] | None) -> Any:
    """The registry served at `addr` (the services register their collectors in it), or None."""
    if addr is None:
        return None
    from powerplane.metrics import serve

    log.info("serving Prometheus metrics on http://%s:%d/metrics", *addr)
    return serve(addr)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s; shutting down (flushing what is buffered)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _site_setting(cfg: Config) -> str:
    if "PP_SITE_FILE" in os.environ:
        return "PP_SITE_FILE"
    return "site_file (config file)" if "site_file" in cfg.model_fields_set else "the default PP_SITE_FILE"


def _site(cfg: Config, path: str | None = None) -> Any:
    """The site of `path`, else of the configured site file; a configured file that is not there is one
    line naming the setting and the path (exit 2)."""
    from powerplane.site_file import load_site

    if path is None and not Path(cfg.site_file).exists():
        raise UsageError(f"{_site_setting(cfg)}={cfg.site_file}: no such site file (fix the path, or generate "
                         "one with `powerplane site generate`)")
    return load_site(path or cfg.site_file)


def _site_optional(cfg: Config) -> Any:
    """Commands that can work without the site (status, dashboard): None only when nobody set one and the
    default is absent (running outside a checkout); a site file that was set must exist."""
    if "site_file" not in cfg.model_fields_set and not Path(cfg.site_file).exists():
        log.warning("no site file (%s absent): levels shown without the tree", cfg.site_file)
        return None
    return _site(cfg)


def _keyring(cfg: Config, create: bool = True) -> Any:
    from powerplane.signing import load_keyring

    return load_keyring(cfg.signing_key_file, cfg.signing_key_id, create=create)


def _ack_keyring(cfg: Config, create: bool = True) -> Any:
    """The keyring actuators sign acks with, and the controller and sink verify them with."""
    from powerplane.signing import ack_key_path, load_keyring

    return load_keyring(ack_key_path(cfg.signing_key_file, cfg.ack_key_file), cfg.ack_key_id, create=create)



def _require_broker(bootstrap: str, what: str, timeout_s: float) -> None:
    """A broker must answer before a long-running stage starts: one line (exit 1) instead of the stage's
    own traceback when there is none."""
    from kafka import KafkaConsumer

    from powerplane.kafka import _retry_connect, process_auth

    _retry_connect(what, bootstrap, lambda: KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                                          bootstrap_timeout_ms=int(timeout_s * 1000),
                                                          **process_auth().kafka_python()),
                   timeout_s).close()


TRACE_HELP = ("request trace CSV the inference pools replay: Azure LLM trace 2023 or 2024 "
              "(TIMESTAMP,ContextTokens,GeneratedTokens) or a generic CSV (arrival_s,prompt_tokens,output_tokens; "
              "see --trace-columns), gzip ok; `powerplane trace generate` makes bursty ones (default: $PP_TRACE, "
              "else the packaged Azure conversation trace 2023; overrides a workload file's `trace`)")


def _add_trace(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--trace", metavar="FILE", help=TRACE_HELP + note)
    p.add_argument("--trace-columns", metavar="ARRIVAL,PROMPT,OUTPUT",
                   help="--trace: the column names of a generic CSV (default arrival_s,prompt_tokens,output_tokens)")


def _trace(args: argparse.Namespace) -> Any:
    """The trace --trace names (None: the workload's, else the default), parsed once; a missing file or one
    that is not a trace is one line naming it (exit 2)."""
    from sim.trace_files import TraceColumns, load_trace

    if args.trace_columns and not args.trace:
        raise UsageError("--trace-columns needs --trace FILE")
    if not args.trace:
        return None
    return load_trace(args.trace, TraceColumns.parse(args.trace_columns) if args.trace_columns else None)
