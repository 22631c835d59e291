"""Actuators per group of racks: each reads the pp.commands partitions its racks' commands are produced to
(the producers' own partitioner decides), the fleet's rack groups split the site so that they read as few
partitions as they can, a twin actuator serves only the racks it is given, and several actuators of one
process share one /metrics page."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner as AioPartitioner  # type: ignore[import-untyped]
from kafka.partitioner.default import DefaultPartitioner
from prometheus_client import CollectorRegistry, generate_latest

from actuators.base import ActuatorConfigError, ActuatorError, load_actuator
from actuators.service import ActuatorMetrics, rack_groups, rack_partitions
from ops.cli import main
from powerplane import topics
from powerplane.metrics import ConsumerLag, register_merged
from powerplane.refsite import reference_site
from sim.fleet import Fleet

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


class _Metadata:
    """The three questions kafka-python's DefaultPartitioner asks of the producer's cluster metadata."""

    def __init__(self, n_partitions: int) -> None:
        self.parts = set(range(n_partitions))

    def topics(self) -> set[str]:
        return {topics.COMMANDS.name}

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return self.parts

    def available_partitions_for_topic(self, _topic: str) -> set[int]:
        return self.parts


@pytest.fixture(scope="module")
def racks() -> list[str]:
    return list(reference_site().rack_ids)  # the 100 MW reference site: 1,024 racks


@pytest.mark.parametrize("n_partitions", [topics.COMMANDS.partitions, 1, 7, 24])
def test_a_rack_groups_partitions_are_those_its_commands_are_produced_to(racks: list[str], n_partitions: int) -> None:
    """For each group of racks, the partitions an actuator reads are exactly those the producers put the
    racks' commands on: kafka-python's DefaultPartitioner (the controller's producer) and aiokafka's (faust's,
    the Java client's murmur2) agree with it, for every partition count."""
    meta, parts = _Metadata(n_partitions), list(range(n_partitions))
    java_like = AioPartitioner()
    groups = [racks[:1], racks[:40], racks[100:500], racks]
    for group in groups:
        produced = {DefaultPartitioner().partition(topics.COMMANDS.name, r, r.encode(), b"", b"", meta)
                    for r in group}
        assert rack_partitions(group, parts) == sorted(produced)
        assert {java_like(r.encode(), parts, parts) for r in group} == produced


def test_fleet_rack_groups_read_disjoint_partitions_up_to_the_partition_count(racks: list[str]) -> None:
    """Each rack is in exactly one group; up to 6 groups (pp.commands' partitions) no two groups read the same
    partition; with more groups than partitions each reads at most two."""
    parts = list(range(topics.COMMANDS.partitions))
    for n in (1, 2, 3, 6, 8, 12):
        groups = rack_groups(racks, n, len(parts))
        assert len(groups) == n and sorted(r for g in groups for r in g) == sorted(racks)
        read = [rack_partitions(g, parts) for g in groups]
        if n <= len(parts):
            assert sum(len(p) for p in read) == len(parts), (n, read)  # disjoint, all covered
        else:
            assert max(len(p) for p in read) <= 2 and max(map(len, groups)) - min(map(len, groups)) <= 1
    with pytest.raises(ValueError, match="give 1 to 1024"):
        rack_groups(racks, 0, len(parts))


def test_a_twin_actuator_serves_only_its_racks() -> None:
    from powerplane.site_file import load_site

    site = load_site(LAB)
    fleet = Fleet(site, seed=1)
    act = load_actuator("twin-a", {"kind": "twin", "racks": ["rack-02", "rack-05"]}, context=fleet)
    assert act.targets() == ["rack-02", "rack-05"]
    gpus = np.array([0, 1], dtype=np.int64)
    assert list(act.set_power_limit("rack-05", gpus, np.array([400.0, 400.0]))) == [400.0, 400.0]
    with pytest.raises(ActuatorError, match="'rack-01' is not served by actuator 'twin-a'"):
        act.set_power_limit("rack-01", gpus, np.array([400.0, 400.0]))
    with pytest.raises(ActuatorConfigError, match=r"actuators.t.racks: not racks of site 'lab': rack-99"):
        load_actuator("t", {"kind": "twin", "racks": ["rack-01", "rack-99"]}, context=fleet)


def test_fleet_refuses_a_wrong_actuator_group_count_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["fleet", "--actuator-groups", "0"])
    assert e.value.code == 2
    assert "--actuator-groups: expected a whole number of at least 1, got '0'" in capsys.readouterr().err


def test_actuators_of_one_process_share_one_metrics_page() -> None:
    """The fleet's N actuators register in one registry: each family once (a duplicate would fail the
    scrape), acks by actuator, the process's refusals added up, each group's lag by partition."""
    reg = CollectorRegistry()
    for name, (applied, refused), parts in (("twin-1", (3, 1), (0, 1)), ("twin-2", (5, 2), (2,))):
        guard = SimpleNamespace(stats=SimpleNamespace(applied=applied, clamped=0, duplicate=0, rejected=0, expired=0,
                                                      reverted=0, security=refused),
                                actuator=SimpleNamespace(name=name), targets={})
        register_merged(reg, ActuatorMetrics(guard, SimpleNamespace(dropped=0, failed=0),  # type: ignore[arg-type]
                                             SimpleNamespace(count=0)))  # type: ignore[arg-type]
        register_merged(reg, ConsumerLag(f"powerplane-actuator-{name}",
                                         lambda parts=parts: {(topics.COMMANDS.name, p): 0 for p in parts}))
    text = generate_latest(reg).decode()
    assert text.count("# TYPE powerplane_actuator_acks_total counter") == 1
    assert text.count("# TYPE powerplane_consumer_lag_records gauge") == 1
    assert 'powerplane_actuator_acks_total{actuator="twin-1",status="applied"} 3.0' in text
    assert 'powerplane_actuator_acks_total{actuator="twin-2",status="applied"} 5.0' in text
    assert "powerplane_actuator_security_refusals_total 3.0" in text
    lag = 'powerplane_consumer_lag_records{group="powerplane-actuator-%s",partition="%d",topic="pp.commands"} 0.0'
    assert all(lag % (n, p) in text for n, p in (("twin-1", 0), ("twin-1", 1), ("twin-2", 2)))
    assert lag % ("twin-2", 0) not in text
