#!/usr/bin/env node
// Decode speed of two builds in one process: both load the same model, then take turns decoding blocks of
// tokens (A B A B ...), so they see the same machine to within a block. Prints each block's tok/s, the medians
// and the median of the pairs' ratios. The old build may be one from before the backend interface
// (Model.forward(ids) and reset()) or after it (sequences).
//   node tools/bench-ab-decode.mjs OLD_CHECKOUT NEW_CHECKOUT MODEL_DIR [ROUNDS] [TOKENS_PER_BLOCK]
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [oldDir, newDir, model, roundsArg, blockArg] = process.argv.slice(2);
if (!oldDir || !newDir || !model) {
  console.error('usage: node tools/bench-ab-decode.mjs OLD_CHECKOUT NEW_CHECKOUT MODEL_DIR [ROUNDS] [TOKENS_PER_BLOCK]');
  process.exit(2);
}
const rounds = Number(roundsArg ?? 8);
const block = Number(blockArg ?? 16);
const prompt = [1, 2, 3, 4, 5, 6, 7, 8];
const context = prompt.length + 1 + rounds * block;

/** A build's model behind one decode function, whichever API it has. */
async function open(dir) {
  const { Model } = await import(pathToFileURL(resolve(dir, 'dist/host/model/model.js')).href);
  const m = await Model.load(model, { threads: 2, contextLength: context });
  let step;
  if (typeof m.createSequence === 'function') {
    const entry = { sequence: m.createSequence(), tokens: prompt };
    const batch = [entry];
    step = (ids) => {
      entry.tokens = ids;
      return m.forward(batch)[0];
    };
  } else step = (ids) => m.forward(ids);
  let logits = step(prompt);
  const ids = [0];
  return {
    close: () => m.close(),
    decode(n) {
      const t = performance.now();
      for (let i = 0; i < n; i++) {
        let best = 0;
        for (let j = 1; j < logits.length; j++) if (logits[j] > logits[best]) best = j;
        ids[0] = best;
        logits = step(ids);
      }
      return (n * 1000) / (performance.now() - t);
    },
  };
}

const sides = { old: await open(oldDir), new: await open(newDir) };
sides.old.decode(1);
sides.new.decode(1);
const rates = { old: [], new: [] };
for (let r = 0; r < rounds; r++) {
  for (const s of r % 2 ? ['new', 'old'] : ['old', 'new']) rates[s].push(sides[s].decode(block));
  console.log(`round ${r + 1}: old ${rates.old[r].toFixed(2)} tok/s, new ${rates.new[r].toFixed(2)} tok/s`);
}
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const ratios = rates.new.map((n, i) => n / rates.old[i]);
console.log(`decode tok/s: old median ${median(rates.old).toFixed(2)}, new median ${median(rates.new).toFixed(2)}, new/old per round: median ${median(ratios).toFixed(3)} [${Math.min(...ratios).toFixed(3)}, ${Math.max(...ratios).toFixed(3)}]`);
await sides.old.close();
await sides.new.close();
