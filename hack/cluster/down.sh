#!/usr/bin/env bash
# `make cluster-down`: stops the control plane that up.sh started and deletes its state.
# Does nothing when no cluster is there.
set -u
here=$(cd "$(dirname "$0")" && pwd)
dir=${CLUSTER_DIR:-$(cd "$here/../.." && pwd)/.cluster}
[ -d "$dir" ] || { echo "cluster: not running"; exit 0; }
if [ -f "$dir/pids" ]; then
  pids=$(tac "$dir/pids")
  for p in $pids; do kill "$p" 2>/dev/null; done
  for _ in $(seq 1 100); do
    alive=0; for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break; sleep 0.1
  done
  for p in $pids; do kill -9 "$p" 2>/dev/null; done
fi
rm -rf "$dir"
echo "cluster: stopped and removed $dir"
