#!/usr/bin/env bash
# The WebGPU backend on the GPU machine (issue 15): Dawn's Vulkan backend on the H200 beside the CUDA backend, in
# one call (GUIDE.md §4: NVIDIA's Vulkan driver is there, the glvnd libraries it needs are carried as Debian
# packages). Both benchmarks make random bf16 weights of the 16B shape (DeepSeek-V2-Lite) on the device, so no
# checkpoint is read: bench/webgpu.bench.ts (prefill, decode and a decode step's profile after 128 and 512 prompt
# tokens), then bench/cuda.bench.ts after 128 and 512. Then a 4-layer 16B checkpoint is written and loaded through
# the WebGPU backend (load GB/s), and the WebGPU conformance tests run on the H200 (DW_SKIP_TESTS=1: not).
#
#   bash tools/gpu-webgpu.sh --prepare   here: .gpu-carry as tools/gpu-run.sh fills it, plus Dawn (xz) and the debs
#   bash tools/gpu-webgpu.sh             there (carry: [".gpu-carry"]); results and logs under $OUT
#
# kernels-gpu/build/libdwcuda.so is built there unless DW_PREBUILT=1 (the carried .gpu-carry/libdwcuda.so).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
carry=.gpu-carry

if [ "${1:-}" = --prepare ]; then
  set -e
  bash tools/gpu-run.sh --prepare >/dev/null
  mkdir -p "$carry/node_modules/webgpu" "$carry/debs"
  cp node_modules/webgpu/index.js node_modules/webgpu/package.json "$carry/node_modules/webgpu/"
  xz -9 -T0 -c node_modules/webgpu/dist/linux-x64/dawn.node > "$carry/dawn.node.xz"
  for p in libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2; do (cd "$carry/debs" && apt-get download "$p" >/dev/null 2>&1); done
  [ "$(ls "$carry"/debs/*.deb | wc -l)" = 7 ] || { echo "apt-get download left out some of the 7 packages"; exit 1; }
  du -sh "$carry"
  exit 0
fi

OUT="${OUT:-$root/gpu-results}"
mkdir -p "$OUT"
say() { echo "[gpu-webgpu] $*" | tee -a "$OUT/log.txt"; }
unxz_to() { python3 -c "import lzma,shutil,sys;shutil.copyfileobj(lzma.open(sys.argv[1]),open(sys.argv[2],'wb'))" "$1" "$2"; }

unxz_to "$carry/node.xz" /tmp/node && chmod +x /tmp/node
NODE=/tmp/node
[ -e node_modules ] || ln -s "$carry/node_modules" node_modules
mkdir -p node_modules/webgpu/dist/linux-x64
unxz_to "$carry/dawn.node.xz" node_modules/webgpu/dist/linux-x64/dawn.node
for d in dist build; do [ -e "$d" ] || cp -r "$carry/$d" "$d"; done
for f in "$carry"/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json XDG_RUNTIME_DIR=/tmp
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/log.txt"

if [ "${DW_PREBUILT:-0}" = 1 ] && [ -f "$carry/libdwcuda.so" ]; then
  mkdir -p kernels-gpu/build && cp "$carry/libdwcuda.so" kernels-gpu/build/libdwcuda.so
else
  say "building libdwcuda.so"
  make -C kernels-gpu -j"$(nproc)" >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; say "CUDA build failed"; }
fi

say "bench/webgpu.bench.js (random bf16 16B on the device; prompts 128, 512; 64 tokens decoded)"
timeout 300 $NODE dist/bench/webgpu.bench.js --prompts 128,512 --gen 64 --out "$OUT/webgpu.json" 2>&1 | tee -a "$OUT/log.txt"
say "exit ${PIPESTATUS[0]}"

for prompt in 128 512; do
  say "bench/cuda.bench.js --prompt $prompt --gen 64"
  timeout 120 $NODE dist/bench/cuda.bench.js --prompt "$prompt" --gen 64 --out "$OUT/cuda-$prompt.json" 2>&1 | tee -a "$OUT/log.txt"
  say "exit ${PIPESTATUS[0]}"
done

model=/tmp/16b4
say "synth 16B, 4 layers (bf16), then its load through --backend webgpu"
$NODE dist/host/cli/main.js synth --preset 16B --layers 4 --out "$model" --force 2>&1 | tail -1 | tee -a "$OUT/log.txt"
timeout 120 $NODE dist/bench/webgpu.bench.js --prompts 16 --gen 8 --config "$model/config.json" --model "$model" --out "$OUT/webgpu-load.json" 2>&1 | tail -2 | tee -a "$OUT/log.txt"

if [ "${DW_SKIP_TESTS:-0}" != 1 ]; then
  say "WebGPU conformance tests on this adapter"
  timeout "${DW_TEST_TIMEOUT:-150}" $NODE node_modules/uvu/bin.js dist/test 'webgpu\.test\.js$' >"$OUT/test.log" 2>&1
  say "exit $?: $(grep -E 'Passed|Total' "$OUT/test.log" | tr -s ' \n' ' ')"
fi
say "done"
