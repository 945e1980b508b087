#!/usr/bin/env bash
# Stop the private cluster started by start_local_cluster.sh: cancel its jobs, stop every daemon, and (with
# --purge) delete its directory.
set -uo pipefail

DIR=${LMM_SLURM_DIR:-/tmp/lmm-slurm}
export SLURM_CONF=$DIR/etc/slurm.conf

stop_pid_file() {
    local file=$1
    [ -f "$file" ] || return 0
    local pid; pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$file"
}

if [ -f "$SLURM_CONF" ]; then
    scancel --full --quiet -u root 2>/dev/null
    sleep 1
fi
stop_pid_file "$DIR/slurmd-n1.pid"
stop_pid_file "$DIR/slurmd-n2.pid"
stop_pid_file "$DIR/slurmctld.pid"
stop_pid_file "$DIR/slurmdbd.pid"
stop_pid_file "$DIR/mariadbd.pid"
stop_pid_file "$DIR/munge/munged.pid"
[ "${1:-}" = "--purge" ] && rm -rf "$DIR"
echo "[local-slurm] stopped" >&2
