"""The actuator's durable replay window: which command ids it has handled (with their outcome), the
issue time of the last command applied to each rack, and the leases those commands hold, so that a
restart forgets none of them: a captured command replayed after a restart is refused as a duplicate, an
older command is still refused as out of order, and a lease taken before the restart still lapses to the
safe value.

sqlite3 from the standard library, not a hand-rolled append-only file: a commit is atomic (no torn last
line to detect and repair), bounding the window is one DELETE (no compaction pass to write and crash-test),
and WAL mode makes a commit one sequential append plus one fsync. The actuator commits once per batch of
commands, after applying them and before sending their acks: an ack is only ever sent for a command the
journal will remember. A crash between applying and committing forgets the batch, and Kafka redelivers it
(offsets are committed after the acks): the same setpoints are applied again and acknowledged once, which
is harmless, where forgetting an acknowledged command would let a replay through.

Pure storage: the Guard decides what is remembered and restores itself from `load`.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from powerplane.schemas import Ack, Command

# What an applied command does to its GPUs' leases: take one (+1) or give it back (-1), on which knob.
_LEASE = {"power_cap": ("power", 1), "sm_clock_lock": ("clock", 1), "power_floor": ("floor", 1)}


@dataclass
class Handled:
    """One remembered command, as the journal gives it back."""

    command_id: str
    target: str
    status: str
    gpus: np.ndarray
    applied: np.ndarray
    reason: str
    ts_s: float
    knob: str  # "" when the outcome took or released no lease
    lease: int  # +1 took a lease until expires_at_s, -1 released, 0 neither
    expires_at_s: float


def lease_effect(cmd: Command, status: str) -> tuple[str, int]:
    """(knob, +1 | -1 | 0): what an outcome of `cmd` did to its GPUs' leases."""
    if status not in ("applied", "clamped"):
        return "", 0
    if cmd.action == "release":
        return str(cmd.params.get("knob", "power")), -1
    return _LEASE.get(cmd.action, ("", 0))


class Journal:
    def __init__(self, path: str | Path, remember: int = 100_000) -> None:
        self.path = Path(path)
        self.remember = remember
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives a power loss, not only a crash
        self._db.execute("CREATE TABLE IF NOT EXISTS handled (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "command_id TEXT UNIQUE NOT NULL, target TEXT, status TEXT, gpus BLOB, applied BLOB, "
                         "reason TEXT, ts_s REAL, knob TEXT, lease INTEGER, expires_at_s REAL)")
        # One row per rack, never trimmed: the order check must outlive the id window.
        self._db.execute("CREATE TABLE IF NOT EXISTS targets (target TEXT PRIMARY KEY, last_issued_at_s REAL)")
        self._db.commit()
        self.pending = 0  # rows written since the last commit
        self._since_trim = 0

    def record(self, ack: Ack, cmd: Command) -> None:
        """Remember one outcome (in the open transaction: durable at the next `commit`)."""
        knob, lease = lease_effect(cmd, ack.status)
        self._db.execute(
            "INSERT OR REPLACE INTO handled (command_id, target, status, gpus, applied, reason, ts_s, knob, lease, "
            "expires_at_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ack.command_id, ack.target, ack.status, np.asarray(ack.gpus, "<u2").tobytes(),
             np.asarray(ack.applied, "<f4").tobytes(), ack.reason, ack.ts_s, knob, lease, cmd.expires_at_s()))
        if ack.status in ("applied", "clamped"):
            self._db.execute("INSERT INTO targets VALUES (?, ?) ON CONFLICT(target) DO UPDATE SET "
                             "last_issued_at_s = max(last_issued_at_s, excluded.last_issued_at_s)",
                             (cmd.target, cmd.issued_at_s))
        self.pending += 1

    def record_revert(self, target: str, knob: str, gpus: np.ndarray, ts_s: float) -> None:
        """Remember that leases lapsed and were reverted, so a restart does not revert them again."""
        self._db.execute(
            "INSERT INTO handled (command_id, target, status, gpus, applied, reason, ts_s, knob, lease, expires_at_s) "
            "VALUES (?, ?, 'reverted', ?, ?, '', ?, ?, -1, ?)",
            (f"revert:{target}:{knob}:{ts_s!r}:{os.urandom(4).hex()}", target, np.asarray(gpus, "<u2").tobytes(),
             b"", ts_s, knob, ts_s))
        self.pending += 1

    def commit(self) -> None:
        """Make what was recorded durable; every so often drop ids beyond the window."""
        if not self.pending:
            return
        self._since_trim += self.pending
        if self._since_trim >= max(1, self.remember // 100):
            self._since_trim = 0
            self._db.execute("DELETE FROM handled WHERE seq <= (SELECT MAX(seq) FROM handled) - ?", (self.remember,))
        self._db.commit()
        self.pending = 0

    def load(self) -> tuple[list[Handled], dict[str, float]]:
        """The remembered outcomes, oldest first (the last `remember`), and each rack's last applied issue
        time."""
        rows = self._db.execute(
            "SELECT command_id, target, status, gpus, applied, reason, ts_s, knob, lease, expires_at_s FROM handled "
            "ORDER BY seq DESC LIMIT ?", (self.remember,)).fetchall()
        handled = [Handled(cid, target, status, np.frombuffer(gpus, "<u2").copy(),
                           np.frombuffer(applied, "<f4").copy(), reason, ts_s, knob or "", int(lease), expires)
                   for cid, target, status, gpus, applied, reason, ts_s, knob, lease, expires in reversed(rows)]
        order = dict(self._db.execute("SELECT target, last_issued_at_s FROM targets").fetchall())
        return handled, order

    def close(self) -> None:
        """Commit what is recorded and close."""
        self.commit()
        self._db.close()


def journal_path(state_dir: str | Path, actuator_name: str) -> Path:
    """Where an actuator's journal lives: one file per actuator name under the config's state_dir."""
    return Path(state_dir) / "actuators" / f"{actuator_name}.journal.sqlite"
