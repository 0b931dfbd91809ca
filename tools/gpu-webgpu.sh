#!/usr/bin/env bash
# The WebGPU backend on the GPU machine (issue 15): Dawn's Vulkan backend on the H200 beside the CUDA backend,
# one synthetic 16B checkpoint (DeepSeek-V2-Lite's shape, bf16), batch-1 decode and 128/512-token prefill, in one
# call (GUIDE.md §4: NVIDIA's Vulkan driver is there, the glvnd libraries it needs are carried as Debian packages).
#
#   bash tools/gpu-webgpu.sh --prepare   here: .gpu-carry as tools/gpu-run.sh fills it, plus Dawn (xz) and the debs
#   bash tools/gpu-webgpu.sh             there (carry: [".gpu-carry"]); results and logs under $OUT
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

say "building libdwcuda.so"
make -C kernels-gpu -j"$(nproc)" >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; say "CUDA build failed"; }

model=/tmp/16b
say "synth 16B (bf16)"
$NODE dist/host/cli/main.js synth --preset 16B --out "$model" --force 2>&1 | tail -1 | tee -a "$OUT/log.txt"

# WebGPU first: it is the one measured for the first time. Each line is `deepwasm bench --json`'s last line.
for backend in webgpu cuda; do
  for prompt in 128 512; do
    say "bench --backend $backend --prompt-tokens $prompt --gen-tokens 64"
    timeout 240 $NODE dist/host/cli/main.js bench --model "$model" --backend "$backend" --prompt-tokens "$prompt" --gen-tokens 64 --json \
      >"$OUT/bench-$backend-$prompt.txt" 2>"$OUT/bench-$backend-$prompt.err"
    say "exit $?: $(tail -1 "$OUT/bench-$backend-$prompt.txt")"
    grep -E '^(model|prefill|decode)' "$OUT/bench-$backend-$prompt.txt" | tee -a "$OUT/log.txt"
    tail -3 "$OUT/bench-$backend-$prompt.err" | tee -a "$OUT/log.txt"
  done
done
say "done"
