"""The trap receiver's config file (README.md beside this file, "Trap receiver"; sample: traps.toml): where it
listens, and one [agents.NAME] table per UPS network card that may send traps, naming the UPS lineup of the
site model its traps are about and what authenticates them. Every mistake of the file is reported at once,
one `agents.ups-a.community_env: ...` line each; secrets (communities read from the environment or a file,
v3 keys) are read here and never logged.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from collectors.snmp import v3 as usm
from powerplane.config import TomlFileError, read_toml
from powerplane.site import FEEDS, KIND, Site
from powerplane.validation import ConfigError, Problems, Table, parse_into

NonEmpty = Annotated[str, Field(min_length=1)]


def _address(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"must be an IP address (traps are checked against the sender's address), got {v!r}") from None


def _engine_id(v: str) -> str:
    text = v.lower().removeprefix("0x").replace(":", "")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"must be the agent's snmpEngineID in hex (e.g. 0x80001f8803...), got {v!r}") from None
    if not 5 <= len(raw) <= 32:  # RFC 3411 SnmpEngineID: 5..32 octets
        raise ValueError(f"must be 5 to 32 octets (RFC 3411), got {len(raw)}")
    return raw.hex()


def _listen(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port (tests, benches)
        raise ValueError(f"must be HOST:PORT with a port of 0-65535, got {v!r}")
    _address(host.strip("[]"))
    return v


class ReceiverOptions(Table):
    listen: Annotated[str, AfterValidator(_listen)] = "0.0.0.0:162"
    site: NonEmpty | None = None  # default: the site model's name
    interval_s: float = Field(60.0, ge=1.0, le=3600.0)  # written into each record (README: what it means)
    dead_letters_per_s: float = Field(50.0, ge=0.0)  # refused datagrams dead-lettered at most this often
    client_id: NonEmpty = "powerplane-traps"


class AgentOptions(Table):
    """One [agents.NAME] table: a UPS network card and the lineup its traps are about."""

    lineup: NonEmpty
    version: Literal["1", "2c", "3"] = "2c"
    address: Annotated[str, AfterValidator(_address)] | None = None  # required for v1/v2c
    community: NonEmpty | None = None  # v1/v2c: inline, or from the environment or a file
    community_env: NonEmpty | None = None
    community_file: NonEmpty | None = None
    engine_id: Annotated[str, AfterValidator(_engine_id)] | None = None  # v3: the agent's snmpEngineID
    user: NonEmpty | None = None
    auth_protocol: str = "SHA-256"
    priv_protocol: str = "AES-128"
    auth_key_file: NonEmpty | None = None
    auth_key_env: NonEmpty | None = None
    priv_key_file: NonEmpty | None = None
    priv_key_env: NonEmpty | None = None
    sys_name: NonEmpty | None = None  # when a trap carries sysName.0, it must be this
    feed: Literal["A", "B"] | None = None  # checked against the lineup's feed in the site model

    def check(self, p: Problems) -> None:
        if self.version == "3":
            self._check_v3(p)
            return
        if self.address is None:
            p.add("address", f'missing (required for version = "{self.version}": a community alone is a '
                             f'password sent in clear)')
        given = [k for k in ("community", "community_env", "community_file") if getattr(self, k) is not None]
        if len(given) != 1:
            p.add("community", "give one of community, community_env or community_file" if not given else
                  f"give only one of {', '.join(given)}")
        elif self.community_env is not None or self.community_file is not None:
            _secret, why = _read(self.community_file, self.community_env)
            if why:
                p.add(given[0], why)
        for key in ("engine_id", "user", "auth_key_file", "auth_key_env", "priv_key_file", "priv_key_env"):
            if getattr(self, key) is not None:
                p.add(key, 'only for version = "3"')

    def _check_v3(self, p: Problems) -> None:
        for key in ("engine_id", "user"):
            if getattr(self, key) is None:
                p.add(key, 'missing (required for version = "3")')
        for key, table in (("auth_protocol", usm.AUTH_PROTOCOLS), ("priv_protocol", usm.PRIV_PROTOCOLS)):
            if getattr(self, key) not in table:
                p.add(key, f"must be one of {', '.join(repr(k) for k in table)}, got {getattr(self, key)!r}")
        for key in ("community", "community_env", "community_file"):
            if getattr(self, key) is not None:
                p.add(key, "only for versions 1 and 2c (v3 authenticates with the user's keys)")
        usm.check_keys(self, p)


def _read(file: str | None, env: str | None) -> tuple[str | None, str]:
    """A community from a file or a variable (no minimum length, unlike v3 keys)."""
    if file is not None:
        try:
            return Path(file).read_text(encoding="utf-8").rstrip("\r\n"), ""
        except (OSError, UnicodeDecodeError) as e:
            return None, f"cannot be read ({type(e).__name__}: {e.strerror if isinstance(e, OSError) else e})"
    if env is not None and env not in os.environ:
        return None, f"environment variable {env} is not set"
    return (os.environ[env], "") if env is not None else (None, "missing")


@dataclass(frozen=True)
class Agent:
    """A configured sender, with its secrets read."""

    name: str
    lineup: str
    feed: str | None
    version: str
    address: str | None
    community: bytes | None
    credentials: usm.Credentials | None
    engine_id: bytes | None
    sys_name: str | None

    def __repr__(self) -> str:  # never the community or keys
        return f"Agent({self.name!r}, v{self.version}, lineup={self.lineup!r}, address={self.address})"


@dataclass(frozen=True)
class TrapConfig:
    host: str
    port: int
    site: str
    interval_s: float
    dead_letters_per_s: float
    client_id: str
    agents: tuple[Agent, ...]


def _agent(name: str, o: AgentOptions, site: Site | None) -> Agent:
    creds = None
    if o.version == "3":
        auth, _ = usm.read_secret(o.auth_key_file, o.auth_key_env)
        priv, _ = usm.read_secret(o.priv_key_file, o.priv_key_env)
        assert o.user is not None and auth is not None and priv is not None  # check() made sure
        creds = usm.Credentials(o.user, o.auth_protocol, auth, o.priv_protocol, priv)
    community = o.community if o.community is not None else _read(o.community_file, o.community_env)[0]
    feed: str | None = o.feed
    if site is not None and o.lineup in site.level_index:
        feed = FEEDS[int(site.level_feed[site.level_index[o.lineup]])]
    return Agent(name, o.lineup, feed, o.version, o.address,
                 community.encode("latin-1", "replace") if community is not None and o.version != "3" else None,
                 creds, bytes.fromhex(o.engine_id) if o.engine_id else None, o.sys_name)


def _site_checks(name: str, o: AgentOptions, site: Site, p: Problems) -> None:
    i = site.level_index.get(o.lineup)
    if i is None or int(site.level_kind[i]) != KIND["ups"]:
        lineups = [site.level_ids[j] for j in site.levels_of_kind("ups").tolist()]
        p.add(f"agents.{name}.lineup", f"{o.lineup!r} is not a UPS lineup of site '{site.name}' (lineups: "
                                       f"{', '.join(lineups) or 'none'})")
    elif o.feed is not None and FEEDS[int(site.level_feed[i])] != o.feed:
        p.add(f"agents.{name}.feed", f"lineup '{o.lineup}' is on feed {FEEDS[int(site.level_feed[i])]}, not {o.feed}")


def _duplicates(agents: dict[str, AgentOptions], p: Problems) -> None:
    """One sender, one agent: an address (v1/v2c) or an engine id and user (v3) names at most one table."""
    seen: dict[tuple[str, ...], str] = {}
    for name, o in agents.items():
        key = ("v3", o.engine_id or "", o.user or "") if o.version == "3" else ("v2", o.address or "")
        if key in seen and all(key[1:]):
            what = "engine_id and user" if o.version == "3" else "address"
            p.add(f"agents.{name}.{'engine_id' if o.version == '3' else 'address'}",
                  f"the same {what} as agents.{seen[key]} (traps could not tell them apart)")
        seen.setdefault(key, name)


def parse(data: dict[str, Any], site: Site | None, source: str = "") -> TrapConfig:
    """The whole file, every mistake at once (ConfigError)."""
    p = Problems()
    unknown = set(data) - {"receiver", "agents"}
    for key in sorted(unknown):
        p.add(key, "unknown table (expected [receiver] and [agents.NAME])")
    rp = Problems("receiver")
    recv = parse_into(ReceiverOptions, data.get("receiver", {}), rp)
    p.lines.extend(rp.lines)
    tables = data.get("agents")
    agents: dict[str, AgentOptions] = {}
    if not isinstance(tables, dict) or not tables:
        p.add("agents", "no [agents.NAME] tables: name at least one UPS card that sends traps")
        tables = {}
    for name, table in tables.items():
        ap = Problems(f"agents.{name}")
        o = parse_into(AgentOptions, table, ap) if isinstance(table, dict) else None
        if not isinstance(table, dict):
            ap.add("", f"expected a table, got {table!r}")
        if o is not None:
            o.check(ap)
            if site is not None:
                _site_checks(name, o, site, p)
            agents[name] = o
        p.lines.extend(ap.lines)
    _duplicates(agents, p)
    if recv is not None and recv.site and site is not None and recv.site != site.name:
        p.add("receiver.site", f"{recv.site!r}, but the site model is '{site.name}' (leave it out to take the model's)")
    site_name = (recv.site if recv and recv.site else None) or (site.name if site is not None else None)
    if recv is not None and site_name is None:
        p.add("receiver.site", "missing: no site model is configured (PP_SITE_FILE), so name the site here")
    p.raise_if_any(source)
    assert recv is not None and site_name is not None
    host, _, port = recv.listen.rpartition(":")
    return TrapConfig(host.strip("[]"), int(port), site_name, recv.interval_s, recv.dead_letters_per_s,
                      recv.client_id, tuple(_agent(n, o, site) for n, o in agents.items()))


def load(path: str | Path, site: Site | None) -> TrapConfig:
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise ConfigError(f"{path}: {e}") from None
    return parse(data, site, source=str(path))
