"""Who may do what on the bus: the Kafka principal of each role and the topics and groups it may read and
write. The one table of access; `powerplane.kafka.apply_acls` turns it into broker ACLs (`dev up`, `topics
create`) and docs/safety.md ("Kafka principals and ACLs") prints it. The broker denies everything else
(`allow.everyone.if.no.acl.found=false`): a collector that tries to write `pp.commands` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from powerplane import topics

# The principal that creates topics and ACLs (and that `powerplane replay` uses: a replay may write any
# topic, so it needs the operator who holds the admin credential); a super user on the broker.
ADMIN = "admin"
# The brokers' own principal on the inter-broker listener (replication); a super user, never a client's.
BROKER = "broker"


def username(role: str) -> str:
    """The SCRAM user name of a role: `pp-<role>`."""
    return f"pp-{role}"


@dataclass(frozen=True)
class Grants:
    """What one role may do. Names ending in '*' are prefixes (faust's internal topics, groups per name)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # consumer groups it may join and commit in (READ)
    describe_groups: tuple[str, ...] = ()  # groups it may only look at (lag, members)
    doc: str = ""


_T = topics
STREAMS_INTERNAL = f"{topics.STREAMS_APP_ID}*"  # changelog, assignor leader: faust's own topics and group

# The consumer group of `powerplane controller --shadow` (a prefix in the ACLs: several shadows, one group
# each, may run side by side).
SHADOW_GROUP = "powerplane-controller-shadow"

ROLES: dict[str, Grants] = {
    "collector": Grants(write=(_T.TELEMETRY.name, _T.FACILITY.name, _T.DEADLETTER.name),
                        doc="collectors and the simulated fleet's publisher"),
    "streams": Grants(read=(_T.TELEMETRY.name, _T.FACILITY.name, _T.RACKS.name, STREAMS_INTERNAL),
                      write=(_T.RACKS.name, _T.AGGREGATES.name, _T.HEADROOM.name, _T.EVENTS.name,
                             _T.DEADLETTER.name, STREAMS_INTERNAL),
                      groups=(STREAMS_INTERNAL,), doc="the faust worker"),
    "controller": Grants(read=(_T.AGGREGATES.name, _T.HEADROOM.name, _T.TELEMETRY.name, _T.FACILITY.name,
                               _T.ACKS.name, _T.GRID.name, _T.JOBS.name),
                         write=(_T.COMMANDS.name, _T.AUDIT.name, _T.EVENTS.name, _T.DEADLETTER.name),
                         groups=("powerplane-controller",), doc="the capping controller"),
    # `controller --shadow`: the controller's inputs (not pp.acks: nothing applies its decisions, so there are no
    # acks of its own), its decisions only to pp.shadow, in its own groups so it never takes the live
    # controller's partitions. It cannot write pp.commands, pp.audit or pp.events: the broker refuses.
    "shadow": Grants(read=(_T.AGGREGATES.name, _T.HEADROOM.name, _T.TELEMETRY.name, _T.FACILITY.name,
                           _T.GRID.name, _T.JOBS.name),
                     write=(_T.SHADOW.name, _T.DEADLETTER.name),
                     groups=(f"{SHADOW_GROUP}*",), doc="a controller in shadow mode (a policy under evaluation)"),
    "actuator": Grants(read=(_T.COMMANDS.name,),
                       write=(_T.ACKS.name, _T.AUDIT.name, _T.EVENTS.name, _T.DEADLETTER.name),
                       groups=("powerplane-actuator*",), doc="actuator services (and the fleet's twin actuator)"),
    "sink": Grants(read=(_T.AGGREGATES.name, _T.HEADROOM.name, _T.EVENTS.name, _T.COMMANDS.name, _T.ACKS.name),
                   write=(_T.EVENTS.name, _T.DEADLETTER.name),
                   groups=("powerplane-sink*",), doc="InfluxDB and Alertmanager sinks"),
    # The site's gateway to its utility or ISO (`powerplane dr gateway`, an OpenADR VEN; `powerplane dr request`):
    # demand-response requests, signed with the grid key, and the events it could not read (dead letters). It reads
    # nothing: the answers are for the site's operators (pp.events).
    "grid": Grants(write=(_T.GRID.name, _T.DEADLETTER.name),
                   doc="the utility's gateway: demand-response requests to pp.grid, events it cannot read to "
                       "pp.deadletter"),
    # The site's scheduler (a Slurm prolog; `powerplane job notice`): job-start notices only, signed with the
    # scheduler key. It reads nothing: the answers are for the site's operators (pp.events).
    "scheduler": Grants(write=(_T.JOBS.name,), doc="the scheduler's prolog: job-start notices to pp.jobs only"),
    # Every `pp.` topic (recordings may hold topics an operator made, e.g. a replay's copies) and faust's own.
    "ops": Grants(read=("pp.*", STREAMS_INTERNAL), describe_groups=("*",),
                  doc="dashboard, status, record, demo observer, topics list: read everything, write nothing"),
}

ROLE_NAMES: tuple[str, ...] = tuple(ROLES)
# Every SCRAM user `dev up` creates: the roles, the admin and the brokers.
USERS: tuple[str, ...] = (*ROLE_NAMES, ADMIN, BROKER)
