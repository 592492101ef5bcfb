#!/usr/bin/env bash
# A monitoring job: score the newest batch, keep the results, page on anomalies.
#
#   examples/monitor.sh MODEL BATCH.csv OUT_DIR [EXPLAIN_K]
#
# Run it from cron or a systemd timer every few minutes (docs/monitoring.md).
# It relies on the documented exit codes of `anomvae score`:
#   0  nothing flagged      1  anomalies flagged
#   2  bad input or model, or no anomvae program found (below)
#   3  internal error
# Each run leaves OUT_DIR/summary-STAMP.json (counts, top anomalies, score
# shift) for dashboards; flagged rows come with their EXPLAIN_K (default 3)
# most anomalous features.
#
# cron and systemd start jobs with a bare environment (no virtual
# environment on PATH), so the program is looked up in this order: the
# ANOMVAE environment variable (a path, or a name on PATH); the
# repository's .venv/bin/anomvae next to this script (the README's set-up);
# anomvae on PATH.
set -uo pipefail

model=${1:?model file}
batch=${2:?CSV batch to score}
out_dir=${3:?directory for results}
explain=${4:-3}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${ANOMVAE:-}" ]; then
  if ! anomvae=$(command -v -- "$ANOMVAE") || [ -d "$anomvae" ]; then
    echo "monitor.sh: ANOMVAE=$ANOMVAE is not an executable program" >&2
    exit 2
  fi
elif [ -x "$repo/.venv/bin/anomvae" ]; then
  anomvae=$repo/.venv/bin/anomvae
elif ! anomvae=$(command -v anomvae); then
  echo "monitor.sh: no anomvae program: ANOMVAE is not set, $repo/.venv/bin/anomvae does not exist" \
    "(the README's set-up makes it) and none is on PATH ($PATH); set ANOMVAE=/path/to/anomvae" >&2
  exit 2
fi

mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$out_dir/anomalies-$stamp.csv"
summary="$out_dir/summary-$stamp.json"

# One torch thread: a scheduled job shares the host (docs/cli.md, "Threads on a busy host").
"$anomvae" score "$model" "$batch" --only-anomalies --fail-on-anomaly --explain "$explain" \
  --summary-json "$summary" -o "$results" --threads 1 2>>"$out_dir/anomvae.log"
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
