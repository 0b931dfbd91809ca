#!/usr/bin/env bash
# Before/after on this machine: `deepwasm bench --json` of two builds alternated in one loop (A B A B ...),
# so both see the same noisy machine, then the median of each and their ratio.
#   bash tools/bench-ab.sh OLD_CHECKOUT NEW_CHECKOUT MODEL_DIR [ROUNDS] [-- extra bench flags]
# Each checkout must be built (npm run build). NODE picks the node binary (default: node on PATH).
set -euo pipefail
old=$1 new=$2 model=$3 rounds=${4:-5}
shift $(( $# < 4 ? $# : 4 ))
[ "${1:-}" = -- ] && shift
node=${NODE:-node}
out=$(mktemp)
for r in $(seq "$rounds"); do
  for side in old new; do
    dir=$old; [ $side = new ] && dir=$new
    line=$("$node" "$dir/dist/host/cli/main.js" bench --model "$model" --threads 2 --json "$@" | tail -1)
    echo "$side $line" | tee -a "$out"
  done
done
"$node" -e '
const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => [l.slice(0, 3), JSON.parse(l.slice(4))]);
const med = (side, k) => { const xs = rows.filter(([s]) => s === side).map(([, j]) => j[k]).sort((a, b) => a - b); return xs[xs.length >> 1]; };
// Each round, new over old too: its two runs are seconds apart and share the phase of the machine.
const paired = (k) => { const o = rows.filter(([s]) => s === "old"), n = rows.filter(([s]) => s === "new"); const r = n.map(([, j], i) => j[k] / o[i][1][k]).sort((a, b) => a - b); return r[r.length >> 1]; };
for (const k of ["prefill_tok_s", "decode_tok_s"]) {
  const [o, n] = [med("old", k), med("new", k)];
  console.log(`${k}: old median ${o}, new median ${n}, new/old ${(n / o).toFixed(3)}, median of new/old per round ${paired(k).toFixed(3)}`);
}' "$out"
