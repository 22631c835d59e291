"""A sources file (`powerplane collect FILE`): every table checked, every mistake of every table reported at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from collectors.base import SourceConfigError, SourceContext, load_source
from collectors.dcgm import DcgmSource
from collectors.service import sources_from_file
from powerplane.site_file import load_site
from powerplane.validation import ConfigError
from sim.fleet import Fleet

ROOT = Path(__file__).resolve().parents[2]


def test_mistakes_of_several_tables_come_together_under_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text('[sources.pdu-a01]\nkind = "snmp"\nhost = "192.0.2.21"\nsite = "lab"\nrack = "r01"\n'
                    'feed = "A"\nport = 70000\n\n'
                    '[sources.bmc]\nkind = "redfish"\nurl = "https://192.0.2.10"\nsite = "lab"\nrack = "r01"\n'
                    'server = 1\nusername = "u"\nverify = false\n\n'
                    '[sources.pdu-b01]\nkind = "snpm"\n\n'
                    '[sources.ok]\nkind = "dcgm"\nurl = "http://192.0.2.17:9400/metrics"\nsite = "lab"\n'
                    'rack = "r01"\nserver = 1\n')
    with pytest.raises(ConfigError) as e:
        sources_from_file(path, SourceContext())
    assert isinstance(e.value, SourceConfigError) and e.value.source == str(path)
    assert e.value.errors[:2] == ["sources.pdu-a01.port: input should be less than or equal to 65535, got 70000",
                                  "sources.bmc.verify: unknown key"]
    assert e.value.errors[2].startswith("sources.pdu-b01.kind: unknown collector kind 'snpm' (known: dcgm, nvml, ")
    assert str(e.value).startswith(f"{path}: 3 error(s)\nsources.pdu-a01.port: ")


def test_the_site_defaults_to_the_site_model_and_is_required_without_one() -> None:
    opts = {"kind": "dcgm", "url": "http://192.0.2.17:9400/metrics", "rack": "rack-01", "server": 1}
    site = load_site(ROOT / "examples" / "lab.toml")
    src = load_source("n1", opts, SourceContext(site=site))
    assert isinstance(src, DcgmSource) and src.site == site.name
    with pytest.raises(SourceConfigError, match=r"^sources\.n1\.site: missing \(required\)$"):
        load_source("n1", opts)


@pytest.mark.parametrize("kind", ["snmp", "redfish", "nvml", "dcgm"])
def test_every_device_sample_validates(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_SNMP_AUTH_KEY", "sample-auth-key")  # the snmp sample's SNMPv3 keys
    monkeypatch.setenv("PP_SNMP_PRIV_KEY", "sample-priv-key")
    sources = sources_from_file(ROOT / "collectors" / kind / "sample.toml", SourceContext())
    assert sources and {s.kind for s in sources} == {kind}


def test_sim_sample_validates() -> None:
    site = load_site(ROOT / "examples" / "lab.toml")
    ctx = SourceContext(site=site, plant=Fleet(site, seed=1))
    tables = tomllib.loads((ROOT / "sim" / "source" / "sample.toml").read_text())["sources"]
    [src] = [load_source(name, opts, ctx) for name, opts in tables.items()]
    assert src.kind == "sim" and src.interval_s == 1.0
    with pytest.raises(SourceConfigError, match=r"^sources\.sim\.seed: unknown key$"):
        load_source("sim", {**tables["sim"], "seed": 3}, ctx)
