#!/usr/bin/env bash
# Measure every preset on a CUDA GPU under a 24 GB cap: one command, one results file, the table rows for
# docs/memory.md.
#
#   bash benchmarks/gpu_memcheck.sh [STEPS]        (default 5 optimizer steps per preset)
#
# Writes benchmarks/results/gpu_memcheck_<date>.jsonl (one `trl-ext memcheck --json` result per preset) and
# benchmarks/results/gpu_memcheck_<date>.md (rows: preset | estimated | measured allocated | measured reserved).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-5}"
DATE="$(date -u +%Y-%m-%d)"
OUT="benchmarks/results/gpu_memcheck_${DATE}.jsonl"
TABLE="benchmarks/results/gpu_memcheck_${DATE}.md"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: use trl-ext memcheck --device cpu')"
GPU="$(python -c 'import torch; print(torch.cuda.get_device_name())')"
: > "$OUT"
echo "| preset | estimated allocated (GiB) | max_memory_allocated (GiB) | max_memory_reserved (GiB) | GPU, date |" > "$TABLE"
echo "|---|---|---|---|---|" >> "$TABLE"
for recipe in recipes/{dpo,grpo,kto,ppo}/*.yaml; do
  echo "== $recipe" >&2
  if python -m trl_ext.cli memcheck "$recipe" --steps "$STEPS" --memory-cap-gb 24 --json > /tmp/gpu_memcheck.json; then
    python - "$recipe" "$GPU" "$DATE" "$OUT" "$TABLE" <<'PY'
import json, sys
recipe, gpu, date, out, table = sys.argv[1:]
r = json.load(open("/tmp/gpu_memcheck.json"))
open(out, "a").write(json.dumps(r) + "\n")
open(table, "a").write(
    f"| `{recipe}` | {r['estimated_allocated_gib']} | {r['max_memory_allocated_gib']} | "
    f"{r['max_memory_reserved_gib']} | {gpu}, {date} |\n"
)
PY
  else
    echo "{\"recipe\": \"$recipe\", \"error\": \"memcheck failed (OOM under the 24 GB cap?)\"}" >> "$OUT"
    echo "| \`$recipe\` | - | failed | - | $GPU, $DATE |" >> "$TABLE"
  fi
done
cat "$TABLE"
