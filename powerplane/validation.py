"""Declarative config validation shared by every file and table the product reads: the site file, the
scenario and workload files, the runtime config and each plug-in's options.

Each is a pydantic v2 model (`Model`: unknown keys refused, values immutable). `validate` checks a whole
document at once and raises one `ConfigError` holding every mistake as a `path: message` line, the
path written as the user wrote the file (`halls[0].rows[1].racks[2].pdu_a`). Checks that span several
fields (references between tables, one limit below another) add their lines with `Problems`, so a file
with a type error and a dangling reference reports both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """Every mistake in one document (a site file, scenario, workload, config, a plug-in's table), one
    `path: message` line each. With a source (the file) str() reads `FILE: N error(s)` then the lines;
    without, just the lines. The one error class of every loader, so a caller catches one thing."""

    def __init__(self, errors: Sequence[str] | str, source: str = "") -> None:
        self.source = source
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        body = "\n".join(self.errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n{body}" if source else body)


class Model(BaseModel):
    """Base of every config model: a key the model does not know is a mistake, not something to ignore."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Table(Model):
    """A table of a TOML file with rules across its keys (a plug-in's options). Strict: TOML has real types,
    so "161" for a port or true for a number is a mistake to report, not a value to convert."""

    model_config = ConfigDict(strict=True)

    def check(self, p: Problems) -> None:
        """Rules across several keys, one `p.add(key, message)` per broken rule (runs once every key is
        valid on its own)."""


def join_path(prefix: str, loc: Iterable[int | str]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing (required)"
    msg = str(err.get("msg", "invalid"))
    # pydantic prefixes messages of custom validators; the user needs only the reason.
    for noise in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(noise)
    msg = msg[0].lower() + msg[1:] if msg[:1].isupper() and not msg[1:2].isupper() else msg
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], dict | list):
        msg += f", got {err['input']!r}"
    return msg


def error_lines(e: ValidationError, prefix: str = "") -> list[str]:
    """`path: message` for every error pydantic found, in document order."""
    lines = []
    for err in e.errors(include_url=False):
        # Union members built from validator functions add their name (`function-after[...]`) to the path;
        # the user never wrote it.
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path = join_path(prefix, loc) or "(top level)"
        lines.append(f"{path}: {_message(err)}")
    return lines


def validate(model: type[M], data: Any, prefix: str = "", source: str = "") -> M:
    """`model` from plain data (a parsed TOML table), or ConfigError with every mistake at once."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(error_lines(e, prefix), source) from None


def parse_into(model: type[M], data: Any, problems: Problems) -> M | None:
    """`model` from `data`, or None with every mistake added to `problems`, so that checks run after it
    (names against a site, say) still report theirs in the same run."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems.lines.extend(error_lines(e, problems.prefix))
        return None


class Problems:
    """Collects `path: message` lines from checks pydantic cannot express, then raises them all at once."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        full = f"{self.prefix}.{path}" if self.prefix and path else (self.prefix or path)
        self.lines.append(f"{full}: {message}")

    def raise_if_any(self, source: str = "", error: type[ConfigError] | None = None) -> None:
        if self.lines:
            raise (error or ConfigError)(self.lines, source)


T = TypeVar("T", bound=Table)


def validate_table(model: type[T], data: Mapping[str, Any], prefix: str, error: type[ConfigError] = ConfigError) -> T:
    """`model` from one table at `prefix` (`sources.pdu-a01`), its cross-key `check` included, or `error`
    with every mistake at once."""
    p = Problems(prefix)
    table = parse_into(model, dict(data), p)
    if table is not None:
        table.check(p)
    p.raise_if_any(error=error)
    assert table is not None  # raise_if_any raised otherwise
    return table
