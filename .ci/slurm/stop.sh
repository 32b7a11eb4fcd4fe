#!/usr/bin/env bash
# Stop the daemons start.sh started (by the pids it recorded), newest first.
set -uo pipefail
PIDS=${SLURM_STATE:-/tmp/core-reid-slurm}/pids
for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
    if [ -s "$PIDS/$daemon" ] && kill "$(cat "$PIDS/$daemon")" 2>/dev/null; then
        echo "stopped $daemon"
    fi
    rm -f "$PIDS/$daemon"
done
