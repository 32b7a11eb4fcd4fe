#!/usr/bin/env bash
# A real single-node SLURM 22.05 for the test suite (Debian packages slurm-wlm, munge, slurmdbd,
# mariadb-server), as root and without systemd: munged, MariaDB (accounting, which sacct needs),
# slurmdbd, slurmctld and slurmd, each started only if it is not already running, so running this
# twice is harmless. Partitions: debug (default), low (pre-emptible: REQUEUE after a 120 s grace
# time), high (pre-empts low) and short (1-minute limit: a longer job waits there forever). Daemon pids go to $SLURM_STATE/pids; stop.sh stops them.
# It starts over whatever another SLURM left on the machine: its cluster name, state, spool, pid
# files, logs and accounting database and user are its own (under $SLURM_STATE, corereid_*),
# and the database password is set every time.
set -euo pipefail
STATE=${SLURM_STATE:-/tmp/core-reid-slurm}
PIDS=$STATE/pids   # what stop.sh stops
RUN=$STATE/run     # the daemons' own pid files
LOGS=$STATE/log
mkdir -p "$PIDS"
[ "$(id -u)" = 0 ] || { echo "start.sh: starting SLURM needs root" >&2; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v mariadbd >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server
fi
running() { [ -s "$PIDS/$1" ] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
    local seconds=$1; shift
    for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    echo "start.sh: gave up waiting for: $*" >&2; return 1
}

# munge: the authentication every SLURM daemon and client uses
install -d -o munge -g munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    head -c 1024 /dev/urandom > /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 sh -c 'munge -n | unmunge'
    cp /run/munge/munged.pid "$PIDS/munged"
fi

# MariaDB with the accounting database
install -d -o mysql -g mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
    runuser -u mysql -- /usr/sbin/mariadbd --pid-file=/run/mysqld/mysqld.pid \
        > "$STATE/mariadb.log" 2>&1 &
    wait_for 30 mysqladmin ping
    cp /run/mysqld/mysqld.pid "$PIDS/mariadbd"
fi
# its own database and user; the password is set every time (an existing user keeps an old one)
mysql -e "CREATE DATABASE IF NOT EXISTS corereid_acct_db;
    CREATE USER IF NOT EXISTS 'corereid'@'localhost';
    ALTER USER 'corereid'@'localhost' IDENTIFIED BY 'corereid';
    GRANT ALL ON corereid_acct_db.* TO 'corereid'@'localhost'; FLUSH PRIVILEGES;"

# configuration (rewritten each time: the node's name and CPU count are this machine's)
# its own state, spool, pid files and logs: another SLURM's (e.g. a state saved under another
# ClusterName, which slurmctld refuses) are never read
install -d -o slurm -g slurm "$STATE/slurmctld" "$RUN" "$LOGS"
install -d "$STATE/slurmd" /etc/slurm
umask 077
cat > "$STATE/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=corereid
StoragePass=corereid
StorageLoc=corereid_acct_db
CONF
umask 022
NODE=$(hostname)
# cred_expire: a requeued job waits this long before it starts again (default 120 s).
# 22.05: no cgroup.conf (proctrack/linuxproc and task/none need no cgroups); the job's own
# --signal is sent at pre-emption only with preempt_send_user_signal.
cat > "$STATE/slurm.conf" <<CONF
ClusterName=corereid
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
AuthInfo=cred_expire=30
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
KillWait=30
MinJobAge=300
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=$NODE CPUs=$(nproc) RealMemory=$(( $(free -m | awk '/^Mem:/ {print $2}') * 8 / 10 )) State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=low Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=120
PartitionName=high Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
PartitionName=short Nodes=$NODE MaxTime=1 State=UP PriorityTier=1
CONF
rm -f /etc/slurm/cgroup.conf
stop() {  # stop one of our daemons (its configuration changed, or it does not serve)
    if running "$1"; then
        kill "$(cat "$PIDS/$1")"
        wait_for 30 sh -c "! kill -0 $(cat "$PIDS/$1")"
        rm -f "$PIDS/$1"
    fi
}
if ! cmp -s "$STATE/slurmdbd.conf" /etc/slurm/slurmdbd.conf; then  # a daemon reads it at start
    install -m 600 -o slurm -g slurm "$STATE/slurmdbd.conf" /etc/slurm/slurmdbd.conf
    stop slurmd; stop slurmctld; stop slurmdbd
fi
if ! cmp -s "$STATE/slurm.conf" /etc/slurm/slurm.conf; then
    cp "$STATE/slurm.conf" /etc/slurm/slurm.conf
    stop slurmd; stop slurmctld
fi
# a slurmdbd that cannot reach its database (e.g. started before its password was set) retries
# for ever: start it again
if running slurmdbd && ! wait_for 10 sacctmgr -n list cluster 2>/dev/null; then
    stop slurmd; stop slurmctld; stop slurmdbd
fi

for daemon in slurmdbd slurmctld slurmd; do
    if ! running "$daemon"; then
        rm -f "$RUN/$daemon.pid"
        "$daemon"
        wait_for 20 test -s "$RUN/$daemon.pid" || { tail -5 "$LOGS/$daemon.log" >&2; exit 1; }
        sleep 2
        cp "$RUN/$daemon.pid" "$PIDS/$daemon"
    fi
done
wait_for 60 sh -c 'sinfo -h -o %T | grep -qE "^(idle|mixed|allocated|completing)"'  # up (busy or not)
sinfo
