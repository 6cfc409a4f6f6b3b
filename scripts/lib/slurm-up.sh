#!/usr/bin/env bash
# A single-node SLURM 22.05 cluster (Debian's slurm-wlm + munge) on 127.0.0.1, for the SLURM
# executor's tests: no systemd, no cgroups, no accounting database (`sacct -c` reads the
# jobcomp/filetxt log). Idempotent: installs only what is missing and returns at once when the
# node is already idle. Run as root. `scripts/lib/slurm-down.sh` stops it.
# Adapted from the tested recipe in ../shared/recipes.md.
set -euo pipefail

# wait_for SECONDS CMD...: poll CMD, each try capped at 2 s (sinfo blocks while slurmctld is down).
wait_for() {
    local end=$((SECONDS + $1)); shift
    until timeout 2 "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.2
    done
}

# Up already (idle, or running jobs): nothing to do.
if timeout 2 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s slurm-wlm munge >/dev/null 2>&1; then
    echo "==> installing slurm-wlm and munge"
    apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; }
fi

# With NoInAddrAny the daemons bind the address `hostname` resolves to: it must be loopback.
if ! getent hosts "$(hostname)" | grep -q '^127\.'; then
    echo "slurm-up: $(hostname) does not resolve to 127.x; the daemons would bind to its address" >&2
    exit 1
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm /run/munge
chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=tresortest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs that ask for no memory get this much, so they do not each take the whole node.
DefMemPerCPU=256
# The node declares more CPUs than the machine has, so short test jobs run side by side.
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
AccountingStorageType=accounting_storage/none
# No cgroups here: memory limits are enforced by sampling each job's processes every second.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
NodeName=localnode NodeAddr=127.0.0.1 NodeHostname=localnode CPUs=8 RealMemory=4096 TmpDisk=10240 State=UNKNOWN
PartitionName=debug Nodes=localnode Default=YES MaxTime=INFINITE State=UP
CONF

if ! { [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
    runuser -u munge -- /usr/sbin/munged
fi
if ! { [ -s /run/slurm/slurmctld.pid ] && kill -0 "$(cat /run/slurm/slurmctld.pid)" 2>/dev/null; }; then
    nohup slurmctld -D -i > /var/log/slurm/slurmctld.out 2>&1 &
fi
if ! { [ -s /run/slurm/slurmd.pid ] && kill -0 "$(cat /run/slurm/slurmd.pid)" 2>/dev/null; }; then
    nohup slurmd -D -N localnode > /var/log/slurm/slurmd.out 2>&1 &
fi
if ! wait_for 30 bash -c "sinfo -h -o %T | grep -q idle"; then
    echo "slurm-up: the node did not become idle; see /var/log/slurm/" >&2
    tail -5 /var/log/slurm/slurmctld.out /var/log/slurm/slurmd.out >&2 || true
    exit 1
fi
echo "==> slurm is up (partition debug, 8 declared CPUs on $(nproc) cores)"
