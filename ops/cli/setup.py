"""Getting a place ready: the development servers, the Kafka topics and credentials, the site file, the signing
keys."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.cli.common import CliError, UsageError, _ack_keyring, _add_output, _emit_json, _keyring, _site

if TYPE_CHECKING:
    from powerplane.config import Config


def cmd_dev(args: argparse.Namespace, cfg: Config) -> int:
    from ops import devservers

    if args.action == "up":
        devservers.up(cfg, kafka=not args.no_kafka, vm=not args.no_tsdb, brokers=args.brokers)
        bootstrap = devservers.cluster_bootstrap(cfg, args.brokers)
        print(f"Kafka at {bootstrap}, InfluxDB v2 write API (VictoriaMetrics) at {cfg.influx_url}")
        if bootstrap != cfg.kafka_bootstrap:  # clients given one node lose the cluster with that node
            print(f"set PP_KAFKA_BOOTSTRAP={bootstrap} so clients outlive the loss of any one node")
    elif args.action == "down":
        devservers.down(cfg, wipe=args.wipe)
    else:
        for name, pid in devservers.status(cfg).items():
            print(f"{name:18s} {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


def _declared_rows() -> list[dict[str, Any]]:
    from powerplane import topics

    return [{"topic": t.name, "partitions": t.partitions, "key": t.key, "retention_ms": t.retention_ms,
             "cleanup_policy": t.configs()["cleanup.policy"]} for t in topics.ALL]


def _on_broker(bootstrap: str, rows: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
    """Each declared topic as the broker has it: its partitions there (None: missing) and records kept."""
    from kafka import KafkaConsumer, TopicPartition

    from powerplane.kafka import _retry_connect, process_auth

    cons = _retry_connect("topics list", bootstrap, lambda: KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, bootstrap_timeout_ms=int(timeout_s * 1000),
        **process_auth().kafka_python()), timeout_s)
    try:
        out = []
        for r in rows:
            ids = cons.partitions_for_topic(r["topic"]) or set()
            parts = [TopicPartition(r["topic"], i) for i in ids]
            kept = None
            if parts:
                begin, end = cons.beginning_offsets(parts), cons.end_offsets(parts)
                kept = sum(end[tp] - begin[tp] for tp in parts)
            out.append({**r, "exists": bool(ids), "partitions_on_broker": len(ids) or None, "records_kept": kept})
        return out
    finally:
        cons.close()


def cmd_topics(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "create":
        from powerplane.kafka import create_topics

        created = create_topics(cfg.kafka_bootstrap)
        print(f"created: {', '.join(created)}" if created else "all topics already exist")
        return 0
    rows = _declared_rows() if args.declared else _on_broker(cfg.kafka_bootstrap, _declared_rows(), args.timeout)
    if args.output == "json":
        _emit_json(rows)
        return 0
    head = f"{'topic':40s} {'parts':>5s} {'key':18s} {'retention':>9s} {'cleanup':13s}"
    print(head if args.declared else head + f" {'on broker':>9s} {'records':>12s}")
    for r in rows:
        line = (f"{r['topic']:40s} {r['partitions']:5d} {r['key']:18s} {r['retention_ms'] / 86_400_000:8.0f}d "
                f"{r['cleanup_policy']:13s}")
        if not args.declared:
            line += f" {r['partitions_on_broker'] or 'MISSING':>9} {r['records_kept'] or 0:>12,}"
        print(line)
    missing = [r["topic"] for r in rows if not args.declared and not r["exists"]]
    if missing:
        print(f"{len(missing)} declared topic(s) missing at {cfg.kafka_bootstrap}: run `powerplane topics create`",
              file=sys.stderr)
        return 1
    return 0


def cmd_site(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "generate":
        from powerplane.refsite import RefSiteParams, reference_site_dict, to_toml

        params = RefSiteParams(halls=args.halls, rows_per_hall=args.rows, racks_per_row=args.racks)
        Path(args.out).write_text(to_toml(reference_site_dict(params)))
        site = _site(cfg, args.out)
        print(f"wrote {args.out}: {site.n_racks} racks, {site.n_gpus} GPUs")
        return 0
    site = _site(cfg, args.file)
    if args.action == "validate":
        print(f"{args.file or cfg.site_file}: ok — {site.n_racks} racks, {len(site.server_ids)} servers, "
              f"{site.n_gpus} GPUs, {len(site.level_ids)} levels")
        return 0
    from powerplane.site import KIND_NAMES

    rated, derated = site.limits_w("normal")
    _, der_a = site.limits_w("A-lost")
    _, der_b = site.limits_w("B-lost")
    print(f"{'level':18s} {'kind':8s} {'rated kW':>9s} {'derated':>9s} {'A lost':>9s} {'B lost':>9s}")
    kinds = set(args.kinds.split(",")) if args.kinds else {"site", "utility", "ups", "rpp", "hall", "row", "zone"}
    for i, lid in enumerate(site.level_ids):
        k = KIND_NAMES[site.level_kind[i]]
        if k in kinds:
            print(f"{lid:18s} {k:8s} {rated[i] / 1e3:9.1f} {derated[i] / 1e3:9.1f} {der_a[i] / 1e3:9.1f} "
                  f"{der_b[i] / 1e3:9.1f}")
    return 0


def cmd_keys(args: argparse.Namespace, cfg: Config) -> int:
    from powerplane.signing import ack_key_path

    for path, what, key_id, var, make in (
            (Path(cfg.signing_key_file), "command", cfg.signing_key_id, "PP_SIGNING_KEY_ID", _keyring),
            (ack_key_path(cfg.signing_key_file, cfg.ack_key_file), "ack", cfg.ack_key_id, "PP_ACK_KEY_ID",
             _ack_keyring)):
        if path.exists():
            print(f"{path} already exists; rotate by adding a new '<id> <hex>' line and setting {var}")
            continue
        make(cfg, create=True)
        print(f"created {what} signing keyring {path} with key id '{key_id}'")
    return 0


def _owner(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    uid, _, gid = text.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise UsageError(f"{flag} {text}: give a numeric UID:GID") from None


def _clients(specs: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, roles = spec.partition("=")
        if not sep or not name or not roles:
            raise UsageError(f"--client {spec}: give NAME=ROLE[,ROLE...], e.g. streams=streams")
        out[name] = [r.strip() for r in roles.split(",") if r.strip()]
    return out


def cmd_security(args: argparse.Namespace, cfg: Config) -> int:
    """Made for the compose cluster's one-shot `kafka-secrets` service; kept if present, so a restart of the
    stack keeps its CA and passwords."""
    from ops import kafka_security

    hosts = [h.strip() for h in args.broker_hosts.split(",") if h.strip()]
    if not hosts:
        raise UsageError("--broker-hosts: name at least one broker host")
    out = Path(args.out)
    try:
        made = kafka_security.write_bundles(
            out, hosts, _clients(args.client), args.broker_mount,
            _owner(args.broker_owner, "--broker-owner"), _owner(args.client_owner, "--client-owner"))
    except kafka_security.SecurityError as e:
        raise CliError(str(e)) from None
    except PermissionError as e:  # --*-owner needs root; a read-only or foreign directory
        raise CliError(f"{e.filename}: {e.strerror} (giving files to another owner needs root)") from None
    print(f"{out / kafka_security.AUTHORITY}: CA and broker certificate for {', '.join(hosts)}; "
          + (f"new passwords for {', '.join(made)}" if made else "passwords kept"))
    print(f"{out / kafka_security.BROKER_BUNDLE}: the brokers' keystore, SCRAM login and users")
    for name, roles in _clients(args.client).items():
        print(f"{out / name}: ca.pem and the password of {', '.join(roles)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds dev, topics, security, site, keys."""
    d = sub.add_parser("dev", help="start/stop the real servers used in development and tests")
    d.add_argument("action", choices=["up", "down", "status"])
    d.add_argument("--no-kafka", action="store_true", help="up: skip Kafka")
    d.add_argument("--no-tsdb", action="store_true", help="up: skip the time-series server")
    d.add_argument("--brokers", type=int, choices=range(1, 10), metavar="N",
                   help="up: Kafka nodes (1-9; default: as formatted, else as many as PP_KAFKA_BOOTSTRAP lists); "
                        "3 gives replication factor 3 and min.insync.replicas 2")
    d.add_argument("--wipe", action="store_true", help="down: also delete their data")
    d.set_defaults(fn=cmd_dev)

    t = sub.add_parser("topics", help="create the declared Kafka topics, or list them as the broker has them")
    t.add_argument("action", choices=["create", "list"])
    t.add_argument("--declared", action="store_true",
                   help="list: the topics as declared, without asking the broker (works offline)")
    t.add_argument("--timeout", type=float, default=5.0, help="list: seconds to wait for the broker")
    _add_output(t)
    t.set_defaults(fn=cmd_topics)

    sec = sub.add_parser("security", help="make the Kafka CA, broker certificate and SCRAM passwords of a "
                                          "deployment, and a credential bundle per broker and client")
    sec.add_argument("action", choices=["init"])
    sec.add_argument("--out", required=True, help="directory: authority/ (CA key, every password), broker/, and "
                                                  "one directory per --client")
    sec.add_argument("--broker-hosts", required=True,
                     help="comma-separated host names the brokers are dialled at (the certificate's names)")
    sec.add_argument("--client", action="append", default=[], metavar="NAME=ROLE[,ROLE]",
                     help="a bundle NAME holding ca.pem and the passwords of these roles only (repeatable)")
    sec.add_argument("--broker-mount", default="/etc/kafka/secrets",
                     help="where the brokers see broker/ (paths inside client.properties)")
    sec.add_argument("--broker-owner", metavar="UID:GID", help="owner of broker/ (needs root)")
    sec.add_argument("--client-owner", metavar="UID:GID", help="owner of the client bundles (needs root)")
    sec.set_defaults(fn=cmd_security)

    s = sub.add_parser("site", help="validate, show or generate a site file")
    s.add_argument("action", choices=["validate", "show", "generate"])
    s.add_argument("file", nargs="?", help="site file (default: PP_SITE_FILE)")
    s.add_argument("--kinds", help="show: comma-separated level kinds to list")
    s.add_argument("--out", default="refsite.toml", help="generate: output file")
    s.add_argument("--halls", type=int, default=4)
    s.add_argument("--rows", type=int, default=16, help="generate: rows per hall")
    s.add_argument("--racks", type=int, default=16, help="generate: racks per row")
    s.set_defaults(fn=cmd_site)

    k = sub.add_parser("keys", help="create the command-signing keyring (development)")
    k.add_argument("action", choices=["init"])
    k.set_defaults(fn=cmd_keys)
