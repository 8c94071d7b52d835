#!/usr/bin/env bash
# ASan + UBSan over the extension: builds fusedrnn._C with FUSEDRNN_SANITIZE=ON in build-asan/ (CPU
# only), stages it beside the Python sources in a temporary folder and runs a fast subset of the
# tests there with the ASan runtime preloaded (CPython is not instrumented, so the runtime must be
# the first library loaded). Any ASan report or UBSan finding aborts the run (non-zero exit).
#
#   tools/sanitize.sh                    # build and run the subset
#   tools/sanitize.sh -k lstm --durations=10          # extra pytest arguments, same subset
#   SANITIZE_TESTS="tests/test_masks.py tests/test_layers.py" tools/sanitize.sh   # other files
#   SANITIZE_JOBS=4 tools/sanitize.sh
#
# The subset (about 2.5 minutes of tests on 2 cores) covers both executors, every activation,
# lengths, masks, dropout, zoneout, projections, threads, the argument checks, the MXNet-style cells
# and concurrent calls (test_concurrency.py, incl. fusedrnn.torch). The whole suite also runs clean
# under the sanitizers (torch, torch.compile, DDP and Keras on JAX all work with the preloaded
# runtime; 6 min on 2 cores), but the files left out (test_layers, test_torch_adapter, the Keras
# and DDP tests: 1-2 minutes each) reach the same core calls through slower frameworks.
# Leak detection is off: CPython does not free everything at exit (bench/leak_check.py measures
# growth per call instead).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SANITIZE_BUILD_DIR:-build-asan}
jobs=${SANITIZE_JOBS:-2}
py=${PYTHON:-python}

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFUSEDRNN_CUDA=OFF \
  -DFUSEDRNN_SANITIZE=ON -DFUSEDRNN_BUILD_PYTHON=ON \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$py")" >/dev/null
cmake --build "$build" -j"$jobs" --target _C

site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
cp -r python/fusedrnn "$site/fusedrnn"
cp "$build"/_C*.so "$site/fusedrnn/"

libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
# The module must be the sanitized one, not the installed one.
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_init_order=1:detect_stack_use_after_return=1:check_initialization_order=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONMALLOC=malloc  # CPython's objects through malloc, so ASan sees NumPy/Python buffers too
# pytest --capture=sys (below): fd-level capture would swallow a report printed just before the abort.

read -r -a tests <<<"${SANITIZE_TESTS:-tests/test_errors.py tests/test_executors.py \
  tests/test_varlen.py tests/test_masks.py tests/test_threads.py tests/test_checkpoint.py \
  tests/test_concurrency.py tests/test_projection.py tests/test_rnn_cell.py tests/test_zoneout.py \
  tests/test_dropout.py tests/test_cell_options.py tests/test_numerics.py tests/test_activations.py}"
echo "== sanitized fusedrnn._C: $(ls "$site"/fusedrnn/_C*.so)"
LD_PRELOAD="$libasan $libubsan" "$py" -c \
  "import fusedrnn, fusedrnn._C as c; assert c.__file__.startswith('$site'), c.__file__; print('imports from', c.__file__)"
start=$(date +%s)
LD_PRELOAD="$libasan $libubsan" "$py" -m pytest -q -p no:cacheprovider -x --capture=sys "${tests[@]}" "$@"
echo "== sanitizers clean ($(( $(date +%s) - start )) s)"
