#!/usr/bin/env bash
# The GPU check: the engine's CUDA path on a real NVIDIA GPU, in one go (under 8 minutes on an
# H200). CI has no GPU; this is run by hand on a machine that has one, from the repository root:
#
#   bash scripts/gpu-check.sh [OUT_DIR]        (default: $OUT, else gpu-check-out)
#
# The machine's own python3 must have a CUDA build of torch (and transformers, tokenizers,
# safetensors, jinja2, msgpack, tqdm, pytest). What it lacks comes as wheels in .whl/, made on a
# machine with network access:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl xformers==0.0.35 pyzmq==27.3.0
#
# It writes to OUT_DIR: env.txt (GPU, versions, which xformers kernel takes each of the
# engine's batch shapes), tests.log (the CUDA tests), bench.log and bench-*.json
# (`symphony bench decode|plain|shared-prefix --device cuda`, beside transformers on the same
# GPU) and summary.md (the bench rows, with batch-1 decode beside the memory-bandwidth bound).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check-out}}
mkdir -p "$out"
PY=${PYTHON:-python3}
MODELS=${GPU_CHECK_MODELS:-smollm2-135m-shape,llama-3.2-1b-shape}
RUNS=${GPU_CHECK_RUNS:-3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
start=$(date +%s)
step() { echo "== $* ($(($(date +%s) - start)) s)" | tee -a "$out/bench.log"; }

if compgen -G ".whl/*.whl" >/dev/null; then
    step "installing $(ls .whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/symphony-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/symphony-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the engine, without installing it

step "environment"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" - <<'EOF'
import torch

print("python", __import__("sys").version.split()[0], "| torch", torch.__version__,
      "| cuda", torch.version.cuda, "| device", torch.cuda.get_device_name(0))
import transformers
import xformers

print("xformers", xformers.__version__, "| transformers", transformers.__version__)
from engine.attention import BatchLayout
from engine.attention.xformers_paged import import_fmha, paged_bias, select_backend

fmha = import_fmha()
dev = torch.device("cuda")
print("engine attention backend (bfloat16, 16-token pages):",
      select_backend(dev, torch.bfloat16, 16).name)
print("engine attention backend (float32, 16-token pages):",
      select_backend(dev, torch.float32, 16).name)
# Which xformers kernel takes each way of describing one mixed batch (a 7-token chunk after 9
# tokens, and a decode after 40), GQA 8 query heads on 2 KV heads of 64 dims, bfloat16.
q_lens, kv_lens = [7, 1], [16, 41]
q = torch.zeros(1, 8, 2, 4, 64, dtype=torch.bfloat16, device=dev)


def kernel_for(label, keys, bias):
    kv = torch.zeros(1, keys, 2, 1, 64, dtype=torch.bfloat16, device=dev).expand(-1, -1, -1, 4, -1)
    try:
        print(f"{label}:", fmha._dispatch_fw(fmha.Inputs(q, kv, kv, attn_bias=bias), False).NAME)
    except Exception as e:
        print(f"{label}: no kernel\n   ", str(e).replace("\n", "\n    "))


for page in (16, 64, 256):
    layout = BatchLayout(q_lens, kv_lens, [[0, 1, 2], [3, 4, 5]], torch.zeros(8), [None] * 2, page)
    kernel_for(f"paged, {page}-token pages", 6 * page, paged_bias(layout, dev))
gathered = fmha.attn_bias.BlockDiagonalCausalFromBottomRightMask.from_seqlens(
    q_lens, kv_lens, device=dev
)
kernel_for("gathered", sum(kv_lens), gathered)
EOF
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

step "CUDA tests"
timeout 240 "$PY" -m pytest -p no:cacheprovider -q -s -rA tests/model/test_cuda_xformers.py \
    >"$out/tests.log" 2>&1
echo "tests exit $?" >>"$out/tests.log"
grep -E "passed|failed|error|selected attention" "$out/tests.log" | tail -5

for workload in decode plain shared-prefix; do
    step "symphony bench $workload --device cuda --models $MODELS --runs $RUNS"
    timeout 150 "$PY" -m engine.cli bench "$workload" --device cuda --models "$MODELS" \
        --runs "$RUNS" --compare defaults --json "$out/bench-$workload.json" 2>&1 | tee -a "$out/bench.log"
done

step "summary"
"$PY" - "$out" <<'EOF' | tee "$out/summary.md"
import json
import sys
from pathlib import Path

import torch

from engine.bench.models import bench_model
from engine.config import ModelConfig

HBM_BYTES_PER_S = 4.8e12  # H200 datasheet; the bound for other GPUs differs
out = Path(sys.argv[1])
print(f"# GPU check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
print("| workload | case | model | dtypes | engine tok/s | transformers tok/s | ratio |")
print("|---|---|---|---|---|---|---|")
rows = []
for f in sorted(out.glob("bench-*.json")):
    rows += json.loads(f.read_text())["results"]
for r in rows:
    print(f"| {r['workload']} | {r['case']} | {r['model']} | {r['dtypes']} | {r['engine']:g} | "
          f"{r['baseline']:g} | {r['ratio']:.2f}x |")
print("\nBatch-1 decode against the memory-bandwidth bound (bf16 weight bytes / 4.8 TB/s):")
for r in rows:
    if r["workload"] == "decode" and r["case"] == "batch 1":
        cfg = ModelConfig.from_file(bench_model(r["model"]) / "config.json")
        bound = HBM_BYTES_PER_S / (2 * cfg.num_params)
        print(f"- {r['model']}: {cfg.num_params / 1e6:.0f}M parameters, bound {bound:,.0f} tok/s; "
              f"engine {r['engine']:g} ({r['engine'] / bound:.1%}), "
              f"transformers {r['baseline']:g} ({r['baseline'] / bound:.1%})")
EOF
step "done"
