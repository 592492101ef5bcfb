#!/usr/bin/env bash
# A monitoring job: score the newest batch, keep the results, page on anomalies.
#
#   examples/monitor.sh MODEL BATCH.csv OUT_DIR
#
# Run it from cron or a systemd timer every few minutes. It relies on the
# documented exit codes of `anomvae score`:
#   0  nothing flagged      1  anomalies flagged
#   2  bad input or model   3  internal error
set -uo pipefail

model=${1:?model file}
batch=${2:?CSV batch to score}
out_dir=${3:?directory for results}
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$out_dir/anomalies-$stamp.csv"

anomvae score "$model" "$batch" --only-anomalies --fail-on-anomaly -o "$results" 2>>"$out_dir/anomvae.log"
status=$?
case $status in
  0) echo "$stamp: no anomalies in $batch"; rm -f "$results" ;;
  1) echo "$stamp: ANOMALIES in $batch, see $results"
     # Replace this line with your pager or alerting hook.
     cat "$results" ;;
  2) echo "$stamp: input error scoring $batch (see $out_dir/anomvae.log)" >&2 ;;
  *) echo "$stamp: anomvae failed with exit code $status (see $out_dir/anomvae.log)" >&2 ;;
esac
exit "$status"
