#!/usr/bin/env bash
# Starts one Kafka node of docker-compose.yml in the apache/kafka image, without the image's own start
# scripts (they want JKS keystores with passwords, and format storage without SCRAM users):
#  1. server.properties from the node's KAFKA_* variables, named as the image names them: drop KAFKA_,
#     lower-case, '_' -> '.', '__' -> '_', '___' -> '-' (KAFKA_*_OPTS and KAFKA_DEBUG are the JVM's, not
#     Kafka's); then the brokers' SCRAM login from the secrets volume (broker.properties, written by
#     `powerplane security init`), so no password is in the compose file or the environment;
#  2. on first start, KRaft storage formatted with every SCRAM user (kafka-storage format --add-scram, one
#     user a line of scram-users): the users exist before the broker serves anyone;
#  3. the broker, in place of this shell.
# DIST, SECRETS_DIR and PROPS are overridable for tests/unit/test_compose.py, which runs this script.
set -euo pipefail
DIST=${DIST:-/opt/kafka}
SECRETS_DIR=${SECRETS_DIR:-/etc/kafka/secrets}
PROPS=${PROPS:-$DIST/config/powerplane-server.properties}

umask 077  # the properties hold the brokers' password
{
  for var in $(compgen -e | sort); do
    case "$var" in
      KAFKA_*_OPTS | KAFKA_DEBUG) continue ;;
      KAFKA_*) ;;
      *) continue ;;
    esac
    key=${var#KAFKA_}
    key=${key//___/-}
    key=${key//__/@}
    key=${key//_/.}
    key=${key//@/_}
    printf '%s=%s\n' "${key,,}" "${!var}"
  done
  cat "$SECRETS_DIR/broker.properties"
} >"$PROPS"

scram=()
while IFS= read -r user; do
  [ -n "$user" ] && scram+=(--add-scram "$user")
done <"$SECRETS_DIR/scram-users"
"$DIST/bin/kafka-storage.sh" format --ignore-formatted --cluster-id "$CLUSTER_ID" --config "$PROPS" "${scram[@]}"

exec "$DIST/bin/kafka-server-start.sh" "$PROPS"
