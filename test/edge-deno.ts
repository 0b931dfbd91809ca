// Run by edge.test.ts under Deno with --allow-net to one local server and no --allow-read: fetches the embedded model
// and the SIMD128 core from the base URL in its first argument, generates greedily on one thread and prints the text
// as JSON.
import { loadModelFromBuffers } from '../host/edge.js';

const base = (globalThis as unknown as { Deno: { args: string[] } }).Deno.args[0];
const get = (name: string): Promise<Response> => fetch(new URL(name, base));
const model = await loadModelFromBuffers({
  wasm: get('deepwasm.wasm'),
  config: await (await get('config.json')).json(),
  tokenizer: await (await get('tokenizer.json')).json(),
  tokenizerConfig: await (await get('tokenizer_config.json')).json(),
  weights: { 'model.safetensors': get('model.safetensors') },
});
const { text } = await model.generateText(String((globalThis as unknown as { Deno: { args: string[] } }).Deno.args[1]), { maxTokens: 24, temperature: 0 });
await model.close();
console.log(JSON.stringify(text));
