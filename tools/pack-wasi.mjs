// Packs a model folder into the image that build/deepwasm-wasi.wasm runs (host/model/pack.ts):
//   node tools/pack-wasi.mjs MODEL_DIR OUT [--context N]
// Needs `npm run build` (it imports dist/). The matrices stay as stored (f32/bf16).
import { writeFileSync } from 'node:fs';
import { Model } from '../dist/host/model/model.js';
import { packModel } from '../dist/host/model/pack.js';

const [dir, out, flag, value] = process.argv.slice(2);
if (!dir || !out || (flag !== undefined && flag !== '--context')) {
  console.error('usage: node tools/pack-wasi.mjs MODEL_DIR OUT [--context N]');
  process.exit(2);
}
const model = await Model.load(dir, { threads: 1, contextLength: flag ? Number(value) : 256 });
try {
  const image = packModel(model);
  writeFileSync(out, image);
  console.log(`${out}: ${image.length} bytes, context ${model.contextLength}`);
} finally {
  await model.close();
}
