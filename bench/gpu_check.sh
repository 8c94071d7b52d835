#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build fusedrnn with the CUDA backend, run the CUDA test suite,
# compute-sanitizer (memcheck, racecheck) over a representative subset, and the cuDNN comparison.
#
#   bash bench/gpu_check.sh [build] [test] [sanitize] [bench] [quickbench]   (default: all but quickbench)
#
# Needs python3 with torch (CUDA build), pybind11, scikit-build-core, pytest, cmake, ninja, nvcc and
# cuBLAS (the nvidia-cublas wheel torch brings); scipy-openblas32 is installed from ./.whl when
# present (a machine without registry access). Logs and JSON go to $OUT (default ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
STAGES=${*:-build test sanitize bench}
PY=${PY:-python3}
SITE=/tmp/fusedrnn-site
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

has() { [[ " $STAGES " == *" $1 "* ]]; }

if has build; then
  mkdir -p $SITE
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target $SITE .whl/*.whl || exit 1
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
  cmake -S . -B /tmp/fusedrnn-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFUSEDRNN_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DPython_EXECUTABLE="$(command -v $PY)" \
    -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  grep 'fusedrnn:' "$OUT/cmake.log"
  cmake --build /tmp/fusedrnn-build -j 16 >"$OUT/build.log" 2>&1 || { grep -E 'error' -A3 "$OUT/build.log" | head -60; exit 1; }
  rm -rf $SITE/fusedrnn && cp -r python/fusedrnn $SITE/fusedrnn && cp /tmp/fusedrnn-build/_C*.so /tmp/fusedrnn-build/_cuda*.so $SITE/fusedrnn/
  $PY -c "import fusedrnn._cuda as c; print('fusedrnn._cuda', c.available())"
fi

if has test; then
  $PY -m pytest tests/test_cuda.py -q -x -p no:cacheprovider 2>&1 | tee "$OUT/test_cuda.log" | tail -15
  $PY -m pytest tests/test_torch_adapter.py -q -x -p no:cacheprovider 2>&1 | tail -3
fi

if has sanitize; then
  sub='float32_matches_cpu and (T5N3 or T7N7) or lengths_match_cpu and lstm or reset_before'
  for tool in memcheck racecheck; do
    timeout ${SANITIZE_TIMEOUT:-200} compute-sanitizer --tool $tool --error-exitcode 9 $PY -m pytest tests/test_cuda.py -q -x \
      -p no:cacheprovider -k "$sub" >"$OUT/sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool: exit $? (9: errors found, 124: timed out)"
    grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed|failed' "$OUT/sanitize_$tool.log" | tail -3
  done
fi

if has bench; then
  $PY bench/cuda_bench.py --json "$OUT/cuda_bench.json" 2>&1 | tee "$OUT/cuda_bench.md"
fi
if has quickbench; then
  $PY bench/cuda_bench.py --quick --json "$OUT/cuda_bench.json" 2>&1 | tee "$OUT/cuda_bench.md"
fi
