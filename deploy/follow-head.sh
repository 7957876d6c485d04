#!/usr/bin/env bash
# Started by cluster.yaml on every worker after `ray start`: stops this machine's Ray
# once its head's Ray is gone, so that `ray down` leaves nothing running on the workers.
#
# Why: with Ray 2.60's `local` provider, `ray down` runs `ray stop` on the head only (it
# marks the workers terminated and nothing more); a worker's raylet gives up on a lost
# head after about a minute, and its log monitor stays behind for good.
#
# The head's GCS port refusing connections means its Ray was stopped: Ray is stopped
# here after three refusals in a row (about 15 s). A head that does not answer at all
# may be a network fault: that takes twelve silent probes (about a minute, as long as
# the raylet waits itself).
#
# Usage: follow-head.sh HEAD_IP [GCS_PORT]
set -u
head=$1
port=${2:-6379}
refused=0
silent=0
while sleep 5; do
    timeout 3 bash -c "exec 3<>/dev/tcp/$head/$port" 2>/dev/null
    case $? in
        0) refused=0; silent=0 ;;
        124) silent=$((silent + 1)); refused=0 ;;
        *) refused=$((refused + 1)) ;;
    esac
    if [ "$refused" -ge 3 ] || [ "$silent" -ge 12 ]; then
        echo "$(date -Is) the head's Ray at $head:$port is gone: stopping Ray here"
        exec ray stop --force
    fi
done
