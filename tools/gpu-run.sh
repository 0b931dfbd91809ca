#!/usr/bin/env bash
# The CUDA bridge's one command: build libdwcuda.so, run the GPU tests, run the 16B benchmarks (one
# sequence; serving throughput of batched decode at 1-8 streams; speculative decoding's verify cost),
# and leave logs and results under $OUT (default ./gpu-results).
#
#   npm run test:gpu          here: builds TypeScript, then runs this script
#   bash tools/gpu-run.sh     on the GPU machine (no Node there: a carried one is unpacked)
#
# Without a GPU the tests print "skipped: no CUDA device (...)" and the script exits 0.
# On the GPU machine, Node, node_modules (koffi, uvu, @huggingface/jinja) and dist/ travel in the
# ignored folder .gpu-carry/ (filled by --prepare below): node.xz, node_modules/, dist/, build/.
#
# Environment: OUT (results folder), DW_SKIP_BENCH=1 (tests only), DW_SKIP_TESTS=1 (bench only),
# DW_BENCH_Q8=1 (the benchmarks once more with q8 weights, to bench-q8.json and serve-q8.json),
# DW_SKIP_SERVE=1 / DW_SKIP_SPEC=1 (leave out the serving-throughput / speculative-decoding benchmarks),
# DW_PREBUILT=1 (use kernels-gpu/build/libdwcuda.so as carried instead of rebuilding),
# DW_BASELINE=DIR (an earlier checkout's dist/ and kernels-gpu/build/libdwcuda.so: its 16B benchmark runs
# just before this one's, to bench-before.json, so that a change is timed before and after in one call),
# DW_SYNC (default 1 for the tests: synchronize and check after every kernel, so a fault names its
# kernel; the fixtures are tiny), DW_TEST_TIMEOUT (seconds for the test run, default 240).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# `bash tools/gpu-run.sh --prepare`: fill .gpu-carry/ here for the device call (carry: [".gpu-carry"]).
if [ "${1:-}" = --prepare ]; then
  set -e
  mkdir -p .gpu-carry/node_modules/@koromix .gpu-carry/node_modules/@huggingface
  [ -f .gpu-carry/node.xz ] || xz -9 -T0 -c "$(command -v node)" > .gpu-carry/node.xz
  for m in koffi @koromix/koffi-linux-x64 uvu dequal diff kleur sade mri @huggingface/jinja; do
    rm -rf ".gpu-carry/node_modules/$m"
    cp -r "node_modules/$m" ".gpu-carry/node_modules/$m"
  done
  rm -rf .gpu-carry/dist .gpu-carry/build
  cp -r dist .gpu-carry/dist
  cp -r build .gpu-carry/build
  if [ -f kernels-gpu/build/libdwcuda.so ]; then cp kernels-gpu/build/libdwcuda.so .gpu-carry/libdwcuda.so; fi
  du -sh .gpu-carry
  exit 0
fi

OUT="${OUT:-$root/gpu-results}"
mkdir -p "$OUT"
say() { echo "[gpu-run] $*"; }
started=$(date +%s)

# --- Node and the JavaScript side --------------------------------------------------------------
carry=.gpu-carry
NODE="${NODE:-}"
if [ -z "$NODE" ]; then
  if command -v node >/dev/null 2>&1; then
    NODE=node
  elif [ -f "$carry/node.xz" ]; then
    python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('$carry/node.xz'),open('/tmp/node','wb'))" && chmod +x /tmp/node
    NODE=/tmp/node
  else
    say "no node on PATH and no $carry/node.xz"; exit 1
  fi
fi
# node_modules is linked; dist/ and build/ are copied (modules resolve paths from their real location).
if [ ! -e node_modules ] && [ -e "$carry/node_modules" ]; then ln -s "$carry/node_modules" node_modules; fi
for d in dist build; do
  if [ ! -e "$d" ] && [ -e "$carry/$d" ]; then cp -r "$carry/$d" "$d"; fi
done
say "node $($NODE --version)"

have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  have_gpu=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
fi

# --- the library ---------------------------------------------------------------------------------
lib=kernels-gpu/build/libdwcuda.so
if [ "${DW_PREBUILT:-0}" = 1 ] && [ -f "$lib" ]; then
  say "using the carried $lib"
elif command -v nvcc >/dev/null 2>&1; then
  say "building $lib with $(nvcc --version | tail -1)"
  if ! make -C kernels-gpu -j"$(nproc)" >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    if [ -f "$carry/libdwcuda.so" ]; then
      say "build failed: falling back to the carried library built elsewhere"
      mkdir -p kernels-gpu/build && cp "$carry/libdwcuda.so" "$lib"
    else
      say "build failed"; exit 1
    fi
  fi
else
  say "nvcc not found: using $lib as it is"
fi
export DEEPWASM_CUDA_LIB="$root/$lib"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/cuda-13.0/lib64:${LD_LIBRARY_PATH:-}"

if [ ! -f dist/test/cuda.test.js ]; then
  say "dist/ is missing: run npm run build:ts first (or carry dist/)"; exit 1
fi

# --- tests ---------------------------------------------------------------------------------------
rc=0
if [ "${DW_SKIP_TESTS:-0}" != 1 ]; then
  say "GPU tests"
  DW_SYNC="${DW_SYNC:-1}" DW_RESULTS="$OUT/correctness.json" timeout "${DW_TEST_TIMEOUT:-240}" $NODE dist/test/cuda.test.js 2>&1 | tee -a "$OUT/test.log"
  rc=${PIPESTATUS[0]}
  say "tests exit code $rc"
  if [ $rc != 0 ] && [ $have_gpu = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
    say "tests failed: memcheck of one CLI run (v3-tiny) -> $OUT/memcheck.log"
    timeout 120 compute-sanitizer --tool memcheck --print-limit 20 $NODE dist/host/cli/main.js logits \
      --model test/fixtures/models/v3-tiny --ids 5,17,300,2 --gen 3 --out /tmp/dw-memcheck.safetensors --backend cuda \
      >"$OUT/memcheck.log" 2>&1
    tail -40 "$OUT/memcheck.log"
  fi
fi

# The commands users run, on both backends: run and chat print the CPU's greedy text on cuda too.
if [ "${DW_SKIP_TESTS:-0}" != 1 ]; then
  say "CLI on cpu and cuda"
  DW_RESULTS_TEXT="$OUT/text.json" timeout "${DW_TEST_TIMEOUT:-240}" $NODE dist/test/cuda-text.test.js 2>&1 | tee -a "$OUT/test.log"
  trc=${PIPESTATUS[0]}
  timeout 120 $NODE dist/test/backend-cli.test.js 2>&1 | tee -a "$OUT/test.log"
  brc=${PIPESTATUS[0]}
  say "CLI tests exit codes $trc $brc"
  [ $rc = 0 ] && rc=$trc
  [ $rc = 0 ] && rc=$brc
  say "batched decode, speculative decoding, the MTP layer"
  for t in cuda-batch cuda-speculative cuda-mtp; do
    DW_SYNC="${DW_SYNC:-1}" timeout "${DW_TEST_TIMEOUT:-240}" $NODE "dist/test/$t.test.js" 2>&1 | tee -a "$OUT/test.log"
    xrc=${PIPESTATUS[0]}
    say "$t exit code $xrc"
    [ $rc = 0 ] && rc=$xrc
  done
fi

# --- benchmark --------------------------------------------------------------------------------------
if [ $have_gpu = 1 ] && [ "${DW_SKIP_BENCH:-0}" != 1 ]; then
  # With a baseline: two rounds of baseline then this checkout, so that run-to-run noise shows beside the change.
  for round in $([ -n "${DW_BASELINE:-}" ] && echo 1 2 || echo 1); do
    sfx=$([ "$round" = 1 ] && echo "" || echo "-$round")
    if [ -n "${DW_BASELINE:-}" ]; then
      say "16B benchmark (bf16) of the baseline $DW_BASELINE, round $round"
      (cd "$DW_BASELINE" && DEEPWASM_CUDA_LIB="$(pwd)/kernels-gpu/build/libdwcuda.so" timeout 300 $NODE dist/bench/cuda.bench.js \
        --out "$OUT/bench-before$sfx.json") 2>&1 | tee -a "$OUT/bench-before.log"
    fi
    say "16B benchmark (bf16), round $round"
    timeout 300 $NODE dist/bench/cuda.bench.js --out "$OUT/bench$sfx.json" 2>&1 | tee -a "$OUT/bench.log"
    brc=${PIPESTATUS[0]}
  done
  say "bench exit code $brc"
  [ $rc = 0 ] && rc=$brc
  if [ "${DW_BENCH_Q8:-0}" = 1 ]; then
    say "16B benchmark (q8)"
    timeout 300 $NODE dist/bench/cuda.bench.js --quant q8 --out "$OUT/bench-q8.json" 2>&1 | tee -a "$OUT/bench.log"
  fi
  if [ "${DW_SKIP_SERVE:-0}" != 1 ]; then
    say "16B serving throughput: batched decode at 1, 2, 4, 8 streams (bf16)"
    timeout 300 $NODE dist/bench/cuda-serve.bench.js --out "$OUT/serve.json" 2>&1 | tee -a "$OUT/bench.log"
    timeout 300 $NODE dist/bench/cuda-serve.bench.js --batch-pdl 0 --out "$OUT/serve-no-pdl.json" 2>&1 | tee -a "$OUT/bench.log"
    [ "${DW_BENCH_Q8:-0}" = 1 ] && timeout 300 $NODE dist/bench/cuda-serve.bench.js --quant q8 --out "$OUT/serve-q8.json" 2>&1 | tee -a "$OUT/bench.log"
  fi
  if [ "${DW_SKIP_SPEC:-0}" != 1 ]; then
    say "16B speculative decoding: verify cost, self-draft speed-up"
    timeout 300 $NODE dist/bench/cuda-speculative.bench.js --out "$OUT/speculative.json" 2>&1 | tee -a "$OUT/bench.log"
  fi
elif [ $have_gpu = 0 ]; then
  say "no GPU: benchmark skipped"
fi
say "done in $(( $(date +%s) - started )) s; results in $OUT"
exit $rc
