"""The OpenADR gateway's config file (README.md beside this file; sample: sample.toml): the VTN it polls, the
VEN it registers as, and how an event's signals read as a demand-response request. Every mistake of the file is
reported at once, one `vtn.url: ...` line each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from collectors.openadr.events import Rules
from powerplane.config import TomlFileError, read_toml
from powerplane.site import Site
from powerplane.validation import ConfigError, Problems, Table, parse_into

NonEmpty = Annotated[str, Field(min_length=1)]


class VtnOptions(Table):
    url: NonEmpty  # e.g. https://vtn.utility.example/OpenADR2/Simple/2.0b
    ven_name: NonEmpty
    ven_id: NonEmpty | None = None  # the VTN assigns one when absent
    cert_file: NonEmpty | None = None  # PEM: this VEN's certificate and key (TLS client, and its messages' signature)
    key_file: NonEmpty | None = None
    ca_file: NonEmpty | None = None  # PEM: the CA the VTN's TLS certificate must chain to
    vtn_fingerprint: NonEmpty | None = None  # the VTN's signing certificate: what it sends must be signed by it

    def check(self, p: Problems) -> None:
        if not self.url.startswith("https://"):
            p.add("url", f"must be an https URL (OpenADR 2.0b runs over TLS with client certificates), got "
                         f"{self.url!r}")
        # Every message is signed both ways: an event no one signed could be anyone's.
        for key in ("cert_file", "key_file", "ca_file", "vtn_fingerprint"):
            path = getattr(self, key)
            if path is None:
                p.add(key, "missing (OpenADR 2.0b: TLS with this VEN's certificate, and signed messages both ways)")
            elif key != "vtn_fingerprint" and not Path(path).is_file():
                p.add(key, f"{path}: no such file")


class ReadingOptions(Table):
    """How an event's signals read as a request (events.py)."""

    simple_levels: dict[str, float] = Field(default_factory=lambda: {"1": 10.0, "2": 25.0, "3": 40.0})
    dispatch_unit: Literal["W", "kW", "MW"] = "MW"
    within_s: float = Field(default=30.0, ge=1.0, le=3600.0)  # lead before the active period when the event gives none
    feeds: dict[str, str] = Field(default_factory=dict)  # OpenADR resource id -> feed level id of the site model

    def check(self, p: Problems) -> None:
        for k, v in self.simple_levels.items():
            if k not in ("1", "2", "3"):
                p.add(f"simple_levels.{k}", "SIMPLE levels are 1, 2 and 3 (0 is normal operation)")
            if not 0.0 < v < 100.0:
                p.add(f"simple_levels.{k}", f"a share of the load above 0 and below 100 %, got {v:g}")


class GatewayFile(Table):
    vtn: VtnOptions
    reading: ReadingOptions = Field(default_factory=lambda: ReadingOptions())
    site: NonEmpty | None = None  # default: the site model's name
    issuer: NonEmpty | None = None  # default: openadr:<ven_name>


@dataclass(frozen=True)
class GatewayConfig:
    vtn: VtnOptions
    rules: Rules
    site: str
    issuer: str


def load(path: str | Path, site: Site | None) -> GatewayConfig:
    """The file, checked (feeds against the site model where there is one); ConfigError with every mistake."""
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise ConfigError(str(e), str(path)) from None
    p = Problems()
    f = parse_into(GatewayFile, data, p)
    if f is not None:
        for prefix, table in (("vtn", f.vtn), ("reading", f.reading)):
            sub = Problems(prefix)
            table.check(sub)
            p.lines.extend(sub.lines)
        if site is not None:
            utility = [site.level_ids[i] for i in site.levels_of_kind("utility")]
            for rid, feed in f.reading.feeds.items():
                if feed not in utility:
                    p.add(f"reading.feeds.{rid}", f"{feed!r} is not a utility feed of site {site.name} (it has: "
                                                  f"{', '.join(utility) or 'none'})")
        if f.site is None and site is None:
            p.add("site", "missing (no site file to take the site's name from)")
    p.raise_if_any(str(path))
    assert f is not None
    rules = Rules({int(k): v for k, v in f.reading.simple_levels.items()}, f.reading.dispatch_unit, f.reading.within_s,
                  dict(f.reading.feeds))
    return GatewayConfig(f.vtn, rules, f.site or (site.name if site else ""), f.issuer or f"openadr:{f.vtn.ven_name}")
