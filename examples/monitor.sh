#!/usr/bin/env bash
# A monitoring job: score the newest batch, keep the results, page on anomalies.
#
#   examples/monitor.sh MODEL BATCH.csv OUT_DIR [EXPLAIN_K]
#
# Run it from cron or a systemd timer every few minutes (docs/monitoring.md).
# It relies on the documented exit codes of `anomvae score`:
#   0  nothing flagged      1  anomalies flagged
#   2  bad input or model   3  internal error
# Each run leaves OUT_DIR/summary-STAMP.json (counts, top anomalies, score
# shift) for dashboards; flagged rows come with their EXPLAIN_K (default 3)
# most anomalous features.
set -uo pipefail

model=${1:?model file}
batch=${2:?CSV batch to score}
out_dir=${3:?directory for results}
explain=${4:-3}
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$out_dir/anomalies-$stamp.csv"
summary="$out_dir/summary-$stamp.json"

anomvae score "$model" "$batch" --only-anomalies --fail-on-anomaly --explain "$explain" \
  --summary-json "$summary" -o "$results" 2>>"$out_dir/anomvae.log"
status=$?
# A shift warning means the whole batch scores unlike the reference data:
# worth a look even when no single row crossed the threshold.
if [ -f "$summary" ] && grep -q '"shifted": true' "$summary"; then
  echo "$stamp: the score distribution of $batch has shifted (see $summary)" >&2
fi
case $status in
  0) echo "$stamp: no anomalies in $batch"; rm -f "$results" ;;
  1) echo "$stamp: ANOMALIES in $batch, see $results"
     # Replace this line with your pager or alerting hook.
     cat "$results" ;;
  2) echo "$stamp: input error scoring $batch (see $out_dir/anomvae.log)" >&2 ;;
  *) echo "$stamp: anomvae failed with exit code $status (see $out_dir/anomvae.log)" >&2 ;;
esac
exit "$status"
