"""Every Kafka topic the product uses, declared in code. `powerplane topics create` makes them;
the broker's auto-create is off, so a typo in a topic name fails loudly instead of inventing a topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000
MAX_REPLICATION = 3


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of `brokers`: three copies where there are
    three brokers, and then a write (acks=all) needs two of them, so one broker may die without losing an
    acknowledged record or refusing writes. Fewer brokers: one copy per broker, and one in sync suffices."""
    rf = max(1, min(MAX_REPLICATION, brokers))
    return rf, 2 if rf >= MAX_REPLICATION else 1


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    key: str  # what the record key is; it decides which records stay ordered together
    retention_ms: int
    compact: bool = False
    doc: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def configs(self, brokers: int = 1) -> dict[str, str]:
        """The topic configs on a cluster of `brokers` (min.insync.replicas follows `replication`)."""
        cfg = {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": "compact,delete" if self.compact else "delete",
            "min.insync.replicas": str(replication(brokers)[1]),
            # A replica that missed acknowledged writes never becomes leader: the partition waits instead.
            "unclean.leader.election.enable": "false",
        }
        cfg.update(self.extra)
        return cfg


TELEMETRY = Topic("pp.telemetry", 12, "rack id", 3 * DAY_MS,
                  doc="TelemetryFrame per rack per sample interval; one rack stays in one partition")
RACKS = Topic("pp.racks", 3, "site id", 1 * DAY_MS,
              doc="RackSummaryBatch (rack summaries in columns), keyed by site so one worker rolls up a site's trees")
AGGREGATES = Topic("pp.aggregates", 6, "level id", 7 * DAY_MS,
                   doc="LevelAggregate per level per window (rack, PDU, RPP, UPS, row, hall, zone, site)")
HEADROOM = Topic("pp.headroom", 6, "level id", 7 * DAY_MS, compact=True,
                 doc="Headroom per level; compacted so a new consumer sees the latest per level")
EVENTS = Topic("pp.events", 3, "event id", 30 * DAY_MS,
               doc="Emergencies and warnings with severity, levels and deadline, opened and resolved")
COMMANDS = Topic("pp.commands", 6, "target (rack id)", 7 * DAY_MS,
                 doc="Signed, leased commands: power cap, SM clock lock, reconfiguration, routing weight")
ACKS = Topic("pp.acks", 6, "target (rack id)", 7 * DAY_MS,
             doc="Actuator acknowledgements: what was actually applied, or why not")
AUDIT = Topic("pp.audit", 3, "command id", 365 * DAY_MS,
              doc="Every command and acknowledgement, kept a year for post-incident review")
FACILITY = Topic("pp.facility", 3, "unit (UPS lineup, rack or sensor source)", 7 * DAY_MS,
                  doc="FacilityReading per UPS, transfer switch or environment sensor per poll")
# `powerplane controller --shadow`: what a policy under evaluation would have commanded, on live inputs. Never
# read by an actuator (their role cannot read it); as many partitions as pp.commands, keyed alike, so a
# comparison reads the two topics the same way. A week: long enough to watch a policy over several days.
SHADOW = Topic("pp.shadow", COMMANDS.partitions, "target (rack id)", 7 * DAY_MS,
               doc="Commands a shadow controller would have issued (marked shadow, signed with the shadow key): "
                   "never applied")
# Demand-response requests from the utility's side (issue 16): written only by the grid role (the site's gateway
# to its utility or ISO, an OpenADR VEN), read by the controller and its shadows. One partition: a few records a
# day, taken in the order sent. A year, like pp.audit: what the utility asked for is evidence in a settlement
# dispute or a post-incident review, and the controller's answers are on pp.events and pp.audit.
GRID = Topic("pp.grid", 1, "site id", 365 * DAY_MS,
             doc="Signed demand-response requests (grid.request) from the utility's gateway; answered on pp.events")
# Job-start notices from the site's scheduler (issue 16; docs/grid.md): written only by the scheduler role (its
# prolog), read by the controller and its shadows. A topic of its own, not pp.grid: each writer's ACL then names
# one topic, so a scheduler's credential cannot send a demand-response request nor the gateway's a notice. One
# partition (a notice per job start, in the order sent); a week: a notice matters for seconds, and the notice as
# received and its answer are kept a year on pp.audit.
JOBS = Topic("pp.jobs", 1, "site id", 7 * DAY_MS,
             doc="Signed job-start notices (job.notice) from the scheduler's prolog; answered on pp.events")
DEADLETTER = Topic("pp.deadletter", 3, "source topic", 14 * DAY_MS,
                   doc="Records that failed validation: original bytes, reason, where they came from")

# The streams worker's state table (faust Table "tree-state"): windows, last readings, forecaster and open
# emergencies per site, so a restarted worker resumes. faust names it <app id>-<table>-changelog; it must
# have as many partitions as the topic the table is keyed like (pp.racks).
STREAMS_APP_ID = "powerplane-streams"
# The streams worker's per-rack stage reads pp.telemetry in its own consumer group (a plain aiokafka consumer,
# batched: faust's per-record path cost more than the stage itself); the site stage stays in the faust group.
STREAMS_RACKS_GROUP = f"{STREAMS_APP_ID}-racks"
# A site's checkpoint is one record of a few MB (6.4 MB for the 100 MW reference site), above Kafka's 1 MB
# default record size.
CHECKPOINT_MAX_BYTES = 64 * 1024 * 1024
TREE_STATE = Topic(f"{STREAMS_APP_ID}-tree-state-changelog", RACKS.partitions, "site id", 7 * DAY_MS,
                   compact=True, doc="Changelog of the streams worker's per-site state (internal)",
                   extra={"max.message.bytes": str(CHECKPOINT_MAX_BYTES)})
# faust's partition assignor elects a leader through this topic; it is created here like every other one.
STREAMS_LEADER = Topic(f"{STREAMS_APP_ID}-__assignor-__leader", 1, "-", 1 * DAY_MS,
                       doc="faust's internal leader-election topic (internal)")

ALL: tuple[Topic, ...] = (TELEMETRY, RACKS, TREE_STATE, STREAMS_LEADER, AGGREGATES, HEADROOM, EVENTS, COMMANDS, ACKS,
                          AUDIT, DEADLETTER, FACILITY, SHADOW, GRID, JOBS)

