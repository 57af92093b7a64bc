#!/usr/bin/env bash
# A real one-node SLURM cluster for the tests, without systemd: munged, slurmctld and slurmd started
# by hand, one partition, no cgroups, no accounting database (see ../shared/SLURM-NOTES.md).
#
#   scripts/slurm_cluster.sh start STATE_DIR   # writes STATE_DIR/slurm.conf, starts the daemons
#   scripts/slurm_cluster.sh stop STATE_DIR    # stops exactly the daemons it started (by their pids)
#   scripts/slurm_cluster.sh status STATE_DIR
#   SLURM_CPUS=6 scripts/slurm_cluster.sh start STATE_DIR   # the node offers 6 CPUs, whatever the machine has
#
# Clients find the cluster through SLURM_CONF=STATE_DIR/slurm.conf (and, where the machine has no
# /etc/slurm/slurm.conf of its own, through a link there: srun inside a job reads only that path).
# Needs root and the Debian packages
# slurmctld slurmd slurm-client munge (scripts/setup_system.sh installs them).
set -euo pipefail
export PATH="/usr/sbin:/sbin:$PATH"

cmd=${1:?usage: $0 start|stop|status STATE_DIR}
state=$(mkdir -p "${2:?usage: $0 start|stop|status STATE_DIR}" && cd "$2" && pwd)
conf="$state/slurm.conf"

alive() {  # a pid whose process exists and is not a zombie
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  local st
  st=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  [ -n "$st" ] && [[ "$st" != Z* ]]
}

start() {
  for b in munged slurmctld slurmd sbatch squeue; do
    command -v "$b" >/dev/null || { echo "missing $b: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }
  done
  [ "$(id -u)" -eq 0 ] || { echo "starting SLURM daemons needs root" >&2; exit 1; }
  mkdir -p "$state"/{spool,ctld,log}
  if alive "$state/slurmctld.pid" || alive "$state/slurmd.pid"; then
    echo "a cluster of $state is running already: stop it first" >&2
    exit 1
  fi
  # munge: one daemon per machine; start it unless one answers already
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    # munged (running as munge) must reach its pid file's folder: /run/munge, not STATE_DIR
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null
    ln -sfn /run/munge/munged.pid "$state/munged.pid"  # started here: stop stops it
  fi
  local host node ctld_port slurmd_port
  host=$(hostname -s)
  # ports of our own, free now: another cluster on this machine (or a second test run) stays apart
  read -r ctld_port slurmd_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
  node=$(slurmd -C | head -1 | sed -e 's/ UpTime.*//')
  # RealMemory a little below what the machine reports, or slurmd drains itself
  local mem
  mem=$(echo "$node" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  node=$(echo "$node" | sed -e "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/")
  # SLURM_CPUS=N: the node offers N CPUs whatever the machine has (slurmd takes the configured
  # values), so that jobs that mostly wait (the tests' paced jobs) do not hold the few real cores' slots
  local overrides=""
  if [ -n "${SLURM_CPUS:-}" ]; then
    node=$(echo "$node" | sed -e "s/CPUs=[0-9]*/CPUs=$SLURM_CPUS/" -e "s/SocketsPerBoard=[0-9]*/SocketsPerBoard=1/" \
      -e "s/CoresPerSocket=[0-9]*/CoresPerSocket=$SLURM_CPUS/" -e "s/ThreadsPerCore=[0-9]*/ThreadsPerCore=1/")
    overrides="SlurmdParameters=config_overrides"
  fi
  cat > "$conf" <<EOF
ClusterName=speakerneurons
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=task=2
ReturnToService=2
MinJobAge=300
# a job past its --time gets SIGTERM at the next time-limit check (slurmctld checks every 30 s), then
# SIGKILL after KillWait seconds: the training stages save a checkpoint on SIGTERM, within a second here
OverTimeLimit=0
KillWait=10
MailProg=/bin/true
$overrides
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$conf"
  # Inside a job, srun (which the plugin's job step runs) reads only the default path: link it to
  # this cluster's file where the machine has none of its own (stop removes the link).
  if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm
    ln -sfn "$conf" /etc/slurm/slurm.conf
  elif [ "$(readlink -f /etc/slurm/slurm.conf)" != "$conf" ]; then
    echo "warning: /etc/slurm/slurm.conf is the machine's own; srun inside jobs will use it, not $conf" >&2
  fi
  slurmctld -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 1 50); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "SLURM up: SLURM_CONF=$conf ($(sinfo -h -o '%P %D %T %c CPUs %m MB'))"
      return 0
    fi
    sleep 0.2
  done
  echo "SLURM did not come up; see $state/log/" >&2
  sinfo >&2 || true
  exit 1
}

stop() {
  local p
  for d in slurmd slurmctld munged; do
    p="$state/$d.pid"
    if alive "$p"; then
      kill "$(cat "$p")" || true
      for _ in $(seq 1 50); do alive "$p" || break; sleep 0.1; done
    fi
    rm -f "$p"
  done
  if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$conf" ]; then
    rm -f /etc/slurm/slurm.conf
  fi
  echo "SLURM stopped ($state)"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) for d in munged slurmctld slurmd; do
            if alive "$state/$d.pid"; then echo "$d running"; else echo "$d stopped"; fi
          done ;;
  *) echo "usage: $0 start|stop|status STATE_DIR" >&2; exit 2 ;;
esac
