#!/usr/bin/env bash
# Start (or stop) a one-node Slurm on this machine, for the test of deploy/slurm (CI) and for
# trying the array scripts without a cluster. Debian's slurmctld, slurmd and munge must be
# installed (`apt-get install slurmctld slurmd munge slurm-client`); runs as root.
#   deploy/slurm/slurm-one-node.sh start DIR    # config, state and logs under DIR
#   deploy/slurm/slurm-one-node.sh stop DIR
set -euo pipefail
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf
case "$cmd" in
start)
  host=$(hostname -s)
  cpus=$(nproc)
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat > "$conf" <<CONF
ClusterName=cepa-test
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  # munge authenticates the daemons to each other.
  if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || (umask 077; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; chown munge:munge /etc/munge/munge.key)
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
  fi
  SLURM_CONF=$conf /usr/sbin/slurmctld -f "$conf"
  SLURM_CONF=$conf /usr/sbin/slurmd -f "$conf"
  for _ in $(seq 60); do
    state=$(SLURM_CONF=$conf sinfo -h -N -o '%t' 2>/dev/null | head -n1 || true)
    case "$state" in idle|mix|alloc) echo "slurm up: node $host ($cpus CPUs), SLURM_CONF=$conf"; exit 0 ;; esac
    sleep 1
  done
  echo "slurm did not come up; logs in $dir/log" >&2
  exit 1
  ;;
stop)
  # Both daemons asked to stop, then waited for (killed after 15 s).
  for f in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  done
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
