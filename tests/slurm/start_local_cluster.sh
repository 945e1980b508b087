#!/usr/bin/env bash
# Start a private two-node Slurm cluster on this host: munged, MariaDB + slurmdbd (accounting, which submitit
# needs to see killed jobs), slurmctld and two slurmd daemons emulating nodes n1 and n2 on 127.0.0.1.
#
#   tests/slurm/start_local_cluster.sh            # prints: export SLURM_CONF=...
#   eval "$(tests/slurm/start_local_cluster.sh)"  # use it from this shell; stop with stop_local_cluster.sh
#
# Everything (config, state, logs, sockets) lives under $LMM_SLURM_DIR (default /tmp/lmm-slurm) and uses its own
# ports, so it coexists with a system Slurm. Needs root (daemons, /etc/hosts, apt-get when Slurm is missing).
# Debian's slurm-wlm 22.05 and munge are installed with apt-get when absent.
set -euo pipefail

DIR=${LMM_SLURM_DIR:-/tmp/lmm-slurm}
CLUSTER=lmmlocal
CTLD_PORT=${LMM_SLURM_CTLD_PORT:-17817}
DBD_PORT=${LMM_SLURM_DBD_PORT:-17819}
DB_PORT=${LMM_SLURM_DB_PORT:-17306}
NODE_PORTS=(17001 17002)
CPUS_PER_NODE=${LMM_SLURM_CPUS_PER_NODE:-2}

log() { echo "[local-slurm] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (it starts daemons and edits /etc/hosts)"

install_packages() {
    local missing=()
    for bin in munged slurmctld slurmd slurmdbd sbatch mariadbd; do
        command -v "$bin" >/dev/null || missing+=("$bin")
    done
    [ ${#missing[@]} = 0 ] && return
    log "installing slurm-wlm, munge and mariadb (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server >&2
}

add_host_names() {
    # torch's rendezvous resolves the first host name of the job's node list: n1 must resolve.
    grep -qE '^127\.0\.0\.1[[:space:]].*\bn1\b' /etc/hosts || echo "127.0.0.1 n1 n2" >> /etc/hosts
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 4))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "timed out after ${seconds}s waiting for $what (logs in $DIR/log)"
}

start_munge() {
    mkdir -p "$DIR/munge"
    chmod 711 "$DIR" "$DIR/munge"  # munged wants every directory of its socket path searchable
    [ -s "$DIR/munge/munge.key" ] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
    chmod 400 "$DIR/munge/munge.key"
    munged -f --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
    wait_for 20 munged munge --socket="$DIR/munge/munge.socket" -n
}

start_mariadb() {
    if [ ! -d "$DIR/mysql/mysql" ]; then
        mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=normal \
            --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed"
    fi
    mariadbd --user=root --datadir="$DIR/mysql" --socket="$DIR/mysql.sock" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --pid-file="$DIR/mariadbd.pid" --log-error="$DIR/log/mariadb.log" \
        --skip-name-resolve --innodb-buffer-pool-size=32M >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb --socket="$DIR/mysql.sock" -uroot -e "SELECT 1"
    mariadb --socket="$DIR/mysql.sock" -uroot -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

write_configs() {
    local host; host=$(hostname -s)
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$DIR/munge/munge.socket
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=[${NODE_PORTS[0]}-${NODE_PORTS[1]}] CPUs=$CPUS_PER_NODE State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
    cp /etc/slurm/plugstack.conf "$DIR/etc/" 2>/dev/null || true
}

main() {
    if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
        log "already running"
        echo "export SLURM_CONF=$DIR/etc/slurm.conf"
        return
    fi
    install_packages
    add_host_names
    mkdir -p "$DIR/log"
    write_configs
    export SLURM_CONF=$DIR/etc/slurm.conf
    start_munge
    start_mariadb
    slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    slurmctld
    wait_for 60 slurmctld scontrol ping
    slurmd -N n1
    slurmd -N n2
    wait_for 90 "both nodes idle" bash -c '[ "$(sinfo -h -N -o %t | grep -c idle)" = 2 ]'
    log "cluster '$CLUSTER' up: $(sinfo -h -N -o '%N %t' | tr '\n' ' ')"
    echo "export SLURM_CONF=$DIR/etc/slurm.conf"
}

main "$@"
