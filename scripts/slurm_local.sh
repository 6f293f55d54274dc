#!/usr/bin/env bash
# A real Slurm cluster of two nodes on this one host, for tests and for trying the Slurm executor.
#
#   bash scripts/slurm_local.sh start    # install (apt) if missing, configure, start; wait for 2 idle nodes
#   bash scripts/slurm_local.sh status   # exit 0 when munge, the controller and both nodes are healthy
#   bash scripts/slurm_local.sh stop     # stop the daemons this script starts (the config stays)
#
# Needs root (it installs packages, writes /etc/slurm/slurm.conf and starts daemons). Both nodes,
# n1 and n2, are this host: two slurmd daemons told apart by their node name (`slurmd -N n1`), each
# with its own port, spool dir and pid file. There is no accounting daemon (slurmdbd), so `sacct`
# does not work here: finished jobs are known to `scontrol show job` for MinJobAge seconds only.
# `start` is idempotent: on a healthy cluster it changes nothing.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by nanochat-cockpit scripts/slurm_local.sh"
HOST=$(hostname -s)
NODES=(n1 n2)
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}

die() { echo "slurm_local: $*" >&2; exit 1; }
say() { echo "slurm_local: $*"; }

alive() {  # alive PIDFILE: the pid in the file names a live process
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Node resources: what slurmd finds on this host (it refuses a node configured with more), with
# memory a little under the total so the node is never drained for "Low RealMemory".
cpus=$(nproc --all)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

write_conf() {
    mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm
    for n in "${NODES[@]}"; do mkdir -p "/var/spool/slurmd/$n"; done
    local tmp
    tmp=$(mktemp /etc/slurm/.slurm.conf.XXXXXX)
    cat >"$tmp" <<EOF
$MARK
ClusterName=cockpit
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
# two slurmd on one host: %n is the node name given with -N
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
# no cgroups here: track a job's processes by parent pid, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# cores are the consumable resource, memory is not; jobs may share cores (OverSubscribe below)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# a cancelled job's processes get SIGTERM, then SIGKILL after KillWait seconds
KillWait=5
# finished jobs stay visible to scontrol/squeue this long (no accounting to ask later)
MinJobAge=300
SlurmdTimeout=60
# both nodes are this host, reached on loopback whether or not its name resolves
NodeName=n[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[6821-6822] CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONF"
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return 0
    command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is not available"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
    }
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_ok && return 0
    local key=/etc/munge/munge.key
    if [ ! -s "$key" ]; then
        say "creating the munge key"
        install -d -o munge -g munge -m 0700 /etc/munge
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$key"
    chmod 0400 "$key"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged does not answer (munge -n | unmunge fails)"
}

ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

# Both slurmd running and their nodes able to take jobs (idle, mixed or allocated). The controller
# restores node states from its state files, so a state alone does not prove a live slurmd.
nodes_ok() {
    local states
    states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u) || return 1
    for n in "${NODES[@]}"; do
        alive "/run/slurmd-$n.pid" || return 1
        echo "$states" | grep -Eq "^$n (idle|mix|alloc)$" || return 1
    done
}

# A node's slurmd has registered with the controller since epoch second $2.
registered_since() {
    local t
    t=$(scontrol show node -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n 's/^SlurmdStartTime=//p')
    [ -n "$t" ] && [ "$t" != "None" ] && [ "$(date -d "$t" +%s 2>/dev/null || echo 0)" -ge "$2" ]
}

healthy() { munge_ok && ctld_ok && nodes_ok; }

start_daemons() {
    alive /run/slurmctld.pid || slurmctld
    for _ in $(seq 100); do ctld_ok && break; sleep 0.2; done
    ctld_ok || die "slurmctld did not come up (see /var/log/slurm/slurmctld.log)"
    local since
    for n in "${NODES[@]}"; do
        alive "/run/slurmd-$n.pid" && continue
        since=$(date +%s)
        slurmd -N "$n" || die "slurmd -N $n failed (see /var/log/slurm/slurmd-$n.log)"
        for _ in $(seq 100); do registered_since "$n" "$since" && break; sleep 0.2; done
        registered_since "$n" "$since" || die "slurmd $n did not register (see /var/log/slurm/slurmd-$n.log)"
    done
}

stop_daemons() {
    local f pid
    for f in /run/slurmd-n1.pid /run/slurmd-n2.pid /run/slurmctld.pid; do
        alive "$f" || continue
        pid=$(cat "$f")
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        rm -f "$f"
    done
}

cmd_start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, writes $CONF, starts daemons)"
    if [ -f "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    install_packages
    local before=""
    [ -f "$CONF" ] && before=$(cat "$CONF")
    write_conf
    if [ "$before" != "$(cat "$CONF")" ] && { alive /run/slurmctld.pid || alive /run/slurmd-n1.pid; }; then
        say "configuration changed: restarting the daemons"
        stop_daemons
    fi
    if healthy; then
        say "already running: $(sinfo -h -N -o '%N:%t' | sort -u | tr '\n' ' ')"
        return 0
    fi
    local t0=$SECONDS
    start_munge
    start_daemons
    # a node that was set down (by hand, or by a test) comes back once its slurmd is up
    for n in "${NODES[@]}"; do
        if sinfo -h -N -n "$n" -o '%t' 2>/dev/null | grep -Eq '^(down|drain|drng|fail)'; then
            scontrol update nodename="$n" state=resume 2>/dev/null || true
        fi
    done
    for _ in $(seq $((WAIT_S * 5))); do nodes_ok && break; sleep 0.2; done
    nodes_ok || die "nodes not idle after ${WAIT_S}s: $(sinfo -h -N -o '%N:%t:%E' | tr '\n' ' ')"
    say "up in $((SECONDS - t0))s: $(sinfo -h -N -o '%N:%t' | sort -u | tr '\n' ' ')"
}

cmd_status() {
    munge_ok || { echo "munge: not running"; exit 1; }
    ctld_ok || { echo "slurmctld: not answering"; exit 1; }
    for n in "${NODES[@]}"; do alive "/run/slurmd-$n.pid" || echo "slurmd $n: not running"; done
    sinfo -N -o '%N %t %c %m %E'
    nodes_ok || exit 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) stop_daemons; say "stopped" ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
