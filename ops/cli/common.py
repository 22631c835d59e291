"""What the command modules share: the logger, stopping on SIGTERM/SIGINT, the site and the keyring of a
config. Underscored as in the handlers they serve: not for use outside ops.cli."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from powerplane.config import Config

log = logging.getLogger("powerplane")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s; shutting down (flushing what is buffered)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _site(cfg: Config, path: str | None = None) -> Any:
    from powerplane.site_file import load_site

    return load_site(path or cfg.site_file)


def _keyring(cfg: Config, create: bool = True) -> Any:
    from powerplane.signing import load_keyring

    return load_keyring(cfg.signing_key_file, cfg.signing_key_id, create=create)


def _ack_keyring(cfg: Config, create: bool = True) -> Any:
    """The keyring actuators sign acks with, and the controller and sink verify them with."""
    from powerplane.signing import ack_key_path, load_keyring

    return load_keyring(ack_key_path(cfg.signing_key_file, cfg.ack_key_file), cfg.ack_key_id, create=create)

