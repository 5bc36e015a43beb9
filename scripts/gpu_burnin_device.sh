#!/usr/bin/env bash
# Burn-in of one real H100 with the real NVML backend, for the committed reference report.
#
# Runs on a machine with one NVIDIA H100 (Python 3.12, nvidia-ml-py and torch installed, no network),
# from a copy of the repository as the working directory. Writes to $OUT:
#   burnin_real_h100.json   the burn-in report (also printed on stdout)
#   nvidia-smi-q.txt        `nvidia-smi -q` before the run, for comparison with the report
#   burnin_stderr.txt       anything the agent printed on stderr
# Reads only: it never changes clocks, power limits, persistence or MIG mode, and never resets a GPU.
#
# A single GPU in a VM has no NVLink peers (every link reports "not supported"), so nvlink_links is null
# ("not checked", said in the report); persistence mode is the VM image's choice, also null. A
# pass-through H100 trains to PCIe Gen5 x16 under load, which is checked. EXPECT overrides the
# expectation JSON, LOAD_SECONDS the length of the load (default 60). The committed
# tests/data/burnin_real_h100_wrong_expectations.json is a run with an 8x H200 type's expectations
# (gpu_count 8, gpu_model "NVIDIA H200", gpu_memory_gib 141, nvlink_links 18): exit code 1, four failures.
set -u -o pipefail

OUT="${OUT:-./out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
LOAD_SECONDS="${LOAD_SECONDS:-60}"
DEFAULT_EXPECT='{"gpu_count":1,"gpu_model":"NVIDIA H100 80GB HBM3","gpu_memory_gib":80,"pcie_gen":5,"pcie_width":16,"nvlink_links":null,"persistence_mode":null,"mig_mode":false}'
EXPECT="${EXPECT:-$DEFAULT_EXPECT}"

{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $("$PYTHON" --version 2>&1)"
  "$PYTHON" -c 'import pynvml, importlib.metadata as m; print("nvidia-ml-py", m.version("nvidia-ml-py"))' 2>&1
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
} > "$OUT/versions.txt"

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi -q > "$OUT/nvidia-smi-q.txt" 2>&1
else
  echo "nvidia-smi not found" > "$OUT/nvidia-smi-q.txt"
fi

"$PYTHON" -m provisioner.burnin \
  --backend nvml \
  --expect "$EXPECT" \
  --load-seconds "$LOAD_SECONDS" \
  --xid-wait-seconds 5 \
  --output "$OUT/burnin_real_h100.json" \
  2> "$OUT/burnin_stderr.txt" > /dev/null
rc=$?

if [ ! -s "$OUT/burnin_real_h100.json" ]; then
  echo "the burn-in wrote no report (exit code $rc):" >&2
  cat "$OUT/burnin_stderr.txt" >&2
  exit 2
fi
cat "$OUT/burnin_real_h100.json"
cat "$OUT/versions.txt" >&2
echo "burn-in exit code: $rc (0 passed, 1 failed, 2 could not run)" >&2
exit "$rc"
