#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying kiln's
# SLURM path: munged + slurmctld + slurmd, select/cons_tres, proctrack/linuxproc,
# task/none, MpiDefault=pmix. Needs root (it writes /etc/slurm/slurm.conf, marked
# as kiln's, and refuses to replace a slurm.conf that is not).
#
#   scripts/slurm-cluster.sh start    # install if missing, configure, start, wait until idle
#   scripts/slurm-cluster.sh stop
#   scripts/slurm-cluster.sh status
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by kiln scripts/slurm-cluster.sh"
HOST=$(hostname -s)
# The node claims more CPUs than the machine has (config_overrides) so that
# multi-rank tests can oversubscribe a small machine, as they do under mpirun.
CPUS=${KILN_SLURM_CPUS:-8}

say() { printf '[slurm-cluster] %s\n' "$*"; }

install() {
  local missing=()
  for pkg in slurm-wlm munge procps; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

configure() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    say "$CONF exists and is not kiln's; refusing to overwrite it"
    exit 1
  fi
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
  local mem_mb
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat > "$CONF" <<CONF
$MARK
ClusterName=kiln
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=pmix
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
NodeName=$HOST CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  chmod 644 "$CONF"
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
}

start() {
  install
  configure
  if ! pgrep -x munged >/dev/null; then
    # A previous session's munged may have died without cleaning up.
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
  fi
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -c
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd -c
  for _ in $(seq 1 60); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
    case "$state" in
      idle*|mixed*|allocated*) say "up: node $HOST $state, $CPUS CPUs"; return 0 ;;
      down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  say "the node did not become idle; logs in /var/log/slurm"
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log || true
  exit 1
}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  say "stopped"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
