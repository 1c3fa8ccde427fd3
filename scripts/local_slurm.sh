#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for trying the `hydra/launcher=slurm` sweeps without a
# real cluster (and for the slow test in tests/test_slurm.py).
#
#   scripts/local_slurm.sh install   # apt-get slurmctld, slurmd, slurm-client, munge (Debian/Ubuntu, root)
#   scripts/local_slurm.sh start     # write a config under $BIRDFLOW_SLURM_DIR and start the daemons
#   scripts/local_slurm.sh env       # print `export SLURM_CONF=...` for sbatch/squeue in your shell
#   scripts/local_slurm.sh status    # sinfo + the daemons this script started
#   scripts/local_slurm.sh stop      # stop only the daemons this script started (by their pid files)
#
# Everything lives in one state directory (default /tmp/birdflow-slurm): slurm.conf, gres.conf, spool
# folders, logs and pid files. /etc/slurm is never touched; clients find the cluster through
# SLURM_CONF, so a system-wide SLURM (if any) is left alone. The daemons run as root (SlurmUser=root):
# this is a throw-away test cluster, and it avoids chown-ing the state directory for a `slurm` user.
# One fake GPU (gres gpu:1 backed by /dev/null) lets `--gpus-per-node=1` jobs schedule on CPU-only
# machines. Ports: BIRDFLOW_SLURM_PORT (slurmctld, default 6817) and +1 (slurmd).
set -euo pipefail

STATE=${BIRDFLOW_SLURM_DIR:-/tmp/birdflow-slurm}
PORT=${BIRDFLOW_SLURM_PORT:-6817}
CONF="$STATE/slurm.conf"

die() { echo "local_slurm.sh: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (the daemons and munge run as system users); try sudo"; }

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  need_root install
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    echo "slurm and munge already installed"; return 0
  fi
  command -v apt-get >/dev/null || die "no apt-get: install slurmctld, slurmd, slurm-client and munge yourself"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
  echo "installed: $(slurmctld -V)"
}

write_conf() {
  local cpus mem_mb
  cpus=$(nproc)
  # leave 20 % of the memory to the system so that jobs asking for --mem still fit
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  mkdir -p "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log"
  cat >"$CONF" <<EOF
# written by scripts/local_slurm.sh start; removed by nothing, rewritten on every start
ClusterName=birdflow-local
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=1
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  printf 'AutoDetect=off\nNodeName=localhost Name=gpu Count=1 File=/dev/null\n' >"$STATE/gres.conf"
}

start_munge() {
  # munge is shared machine-wide (one socket in /run/munge): reuse a running one, else start ours
  if munge -n </dev/null >/dev/null 2>&1; then return 0; fi
  [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key missing; run 'local_slurm.sh install' (the munge package creates it)"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  su -s /bin/sh munge -c /usr/sbin/munged
  for _ in $(seq 20); do [ -s /run/munge/munged.pid ] && break; sleep 0.25; done
  cp /run/munge/munged.pid "$STATE/munged.pid"   # ours to stop
}

start() {
  need_root start
  command -v slurmctld >/dev/null || die "slurmctld not found; run 'local_slurm.sh install' first"
  running "$STATE/slurmctld.pid" && die "already running (state in $STATE); 'local_slurm.sh stop' first"
  write_conf
  start_munge
  export SLURM_CONF="$CONF"
  slurmctld -i -f "$CONF"      # -i: ignore state left by a previous run
  slurmd -N localhost -f "$CONF"
  for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -q idle && { sinfo; echo "export SLURM_CONF=$CONF"; return 0; }
    sleep 0.5
  done
  echo "--- $STATE/log/slurmctld.log" >&2; tail -n 20 "$STATE/log/slurmctld.log" >&2 || true
  echo "--- $STATE/log/slurmd.log" >&2; tail -n 20 "$STATE/log/slurmd.log" >&2 || true
  stop
  die "the node did not become idle within 30 s (logs above)"
}

stop() {
  local f pid
  for f in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/munged.pid"; do
    if running "$f"; then
      pid=$(cat "$f")
      kill "$pid"
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$f"
  done
  echo "stopped (state kept in $STATE)"
}

status() {
  local f
  for f in slurmctld slurmd munged; do
    if running "$STATE/$f.pid"; then echo "$f: pid $(cat "$STATE/$f.pid")"; else echo "$f: not started here"; fi
  done
  SLURM_CONF="$CONF" sinfo 2>/dev/null || true
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) die "usage: local_slurm.sh install|start|stop|status|env" ;;
esac
