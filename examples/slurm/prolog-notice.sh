#!/bin/bash
# A Slurm PrologSlurmctld hook (slurm.conf: PrologSlurmctld=/etc/slurm/prolog-notice.sh) that announces each
# job's start to the powerplane controller, so its ramp limiter takes the job's GPUs up before they all start
# within the same second (docs/grid.md, "The live job-notice input"). An example, not a tested plug-in.
#
# It runs once per job on the slurmctld host, at allocation, where SLURM_JOB_NODELIST names the job's nodes; it
# names each node's every GPU by the node's host name, which must be the site file's server name
# (<rack id>-sNN). A job on part of a node is announced as the whole node (the per-GPU ids, SLURM_JOB_GPUS, are
# only in the compute nodes' Prolog). It says the job starts LEAD_S from now and sleeps that long: it assumes
# Slurm launches the job only once PrologSlurmctld has returned (check that on your Slurm version).
#
# Needs on the slurmctld host: the powerplane CLI, its Kafka settings (PP_KAFKA_*, the scheduler role's password)
# and the scheduler keyring (PP_SCHEDULER_KEY_FILE). It never fails the job: a notice that was not sent is logged,
# and the job then starts unannounced.
set -u
PATH=/usr/bin:/bin:${POWERPLANE_BIN:-/opt/powerplane/bin}
LEAD_S=${PP_JOB_LEAD_S:-30}  # the 100 MW site's pace takes a 20 MW job up in about 20 s

hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd, -)
# The id is the job id and this start (a requeued job keeps its id, and an id is taken once).
if powerplane job notice --job "${SLURM_JOB_ID}.$(date +%s)" --start-in-s "$LEAD_S" --gpus "$hosts" \
        --issuer "slurm prolog on $(hostname)" ${PP_JOB_EXPECTED_W:+--expected-w "$PP_JOB_EXPECTED_W"}; then
    sleep "$LEAD_S"
else
    logger -t powerplane "job ${SLURM_JOB_ID}: start notice not sent; the job starts unannounced"
fi
exit 0
