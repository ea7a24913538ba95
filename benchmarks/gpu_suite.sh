#!/usr/bin/env bash
# The GPU measurements the open issues ask for, in stages that each fit one 10-minute device call.
# Run from the repository root on a CUDA machine; results go to $OUT (default benchmark_results).
#   bash benchmarks/gpu_suite.sh tests       # tests/test_gpu.py: 16-mixed / bf16-mixed correctness
#   bash benchmarks/gpu_suite.sh core        # engine overhead vs plain / T backwards / torchjd (issue 2)
#   bash benchmarks/gpu_suite.sh catalogue   # strategies vs torchjd and LibMTL at T = 2/10/40 (issue 3)
#   bash benchmarks/gpu_suite.sh representation  # the same strategies on the trunk's features (issue 3)
#   bash benchmarks/gpu_suite.sh rgb         # RGB alpha_steps 5/30/50 vs PCGrad and plain (issue 6)
#   bash benchmarks/gpu_suite.sh plot        # PLOT over its base method, ResNet-32 (issue 4)
#   bash benchmarks/gpu_suite.sh solvers     # kernels and CUDA time of one device-path solve per strategy
#   bash benchmarks/gpu_suite.sh solve_on    # full step, host vs device solve, against torchjd, T = 2/10/40
#   bash benchmarks/gpu_suite.sh forms       # the Jacobian forms measured and chosen on the GPU; the flag read
#   bash benchmarks/gpu_suite.sh fsdp        # a loss weighting trains under FSDP; gradient strategies are refused
# Wheels the device image lacks (torchjd, LibMTL, qpsolvers, quadprog) are installed from .whl/
# when that folder is there (see benchmarks/README.md).
set -euo pipefail
OUT="${OUT:-benchmark_results}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}."
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" || true

stage="${1:?name a stage: tests, core, catalogue, representation, rgb, plot, solvers, solve_on, forms or fsdp}"
case "$stage" in
  tests)
    python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
    ;;
  core)
    python3 benchmarks/step_overhead.py --tasks 2 10 40 --out "$OUT/core" 2>&1 | tee "$OUT/core.log"
    ;;
  catalogue)
    python3 benchmarks/step_overhead.py --tasks 2 10 40 --precision 32-true --configs plain \
      --strategies MGDA CAGrad UPGrad PCGrad GradVac IMTLG NashMTL AlignedMTL \
      --torchjd-aggregators MGDA CAGrad:c=0.5 UPGrad PCGrad GradVac IMTLG NashMTL AlignedMTL \
      --libmtl-weightings MGDA CAGrad PCGrad GradVac IMTL --steps 20 --warmup 5 \
      --out "$OUT/catalogue" 2>&1 | tee "$OUT/catalogue.log"
    ;;
  representation)
    python3 benchmarks/step_overhead.py --tasks 2 10 40 --configs plain \
      --strategies MGDA CAGrad UPGrad PCGrad GradVac IMTLG NashMTL AlignedMTL RGB \
      --strategy-scope representation --out "$OUT/representation" 2>&1 | tee "$OUT/representation.log"
    ;;
  rgb)
    python3 benchmarks/step_overhead.py --tasks 2 10 40 --configs plain \
      --strategies PCGrad RGB:alpha_steps=5 RGB:alpha_steps=30 RGB:alpha_steps=50 \
      --out "$OUT/rgb" 2>&1 | tee "$OUT/rgb.log"
    ;;
  plot)
    for classes in 10 100; do
      for precision in bf16-mixed 16-mixed; do
        python3 benchmarks/plot_overhead.py --classes "$classes" --precision "$precision"
      done
    done 2>&1 | tee "$OUT/plot.log"
    ;;
  solvers)
    for kind in random ill_conditioned; do
      python3 -m benchmarks.solver_cost --device cuda --tasks 2 10 40 64 --kind "$kind" \
        --json "$OUT/solvers_$kind.json"
    done 2>&1 | tee "$OUT/solvers.log"
    ;;
  solve_on)
    python3 benchmarks/step_overhead.py --tasks 2 10 40 --precision 32-true \
      --configs plain separate_backwards \
      --strategies MGDA MGDA:solve_on=device CAGrad CAGrad:solve_on=device \
        UPGrad UPGrad:solve_on=device NashMTL NashMTL:solve_on=device \
      --torchjd-aggregators MGDA CAGrad:c=0.5 UPGrad NashMTL --steps 20 --warmup 5 \
      --out "$OUT/solve_on" 2>&1 | tee "$OUT/solve_on.log"
    ;;
  forms)
    python3 benchmarks/step_overhead.py --tasks 2 10 40 --configs plain separate_backwards \
      jacobian torchjd --jacobian-forms auto loop batched func --strategies UPGrad \
      --out "$OUT/forms" 2>&1 | tee "$OUT/forms.log"
    ;;
  fsdp)
    python3 benchmarks/fsdp_check.py 2>&1 | tee "$OUT/fsdp.log"
    ;;
  *)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
