// WASI build of the core (build/deepwasm-wasi.wasm, asconfig.wasi.json): a portable command that runs
// the model of a packed image (host/model/pack.ts, tools/pack-wasi.mjs) on one thread.
//   deepwasm-wasi.wasm <image  ID... [--steps N]
// reads the image from stdin, runs the prompt ids through the model (prefill), then N greedy decode
// steps, and prints "ids: ..." (the greedy ids) and "checksum: ..." (sum of the last logits).
// The image describes itself: the config numbers, a directory of every weight by role, layer and index
// (format, shape, address, name), then the host's wasm memory from address 0 to the end of the model's
// arena. The memory is copied to a 64-aligned base here and every address moved by that base; each
// weight is looked up by its role and its shape checked against the config. Kernels run single
// threaded: pool_init(board, 1) makes parallel() run each task inline.
import { fd_read, iovec } from 'bindings/wasi_snapshot_preview1';
import { BOARD_BYTES } from '../board';
import { pool_init } from '../pool';
import { matmul, mla_attention, silu_mul } from '../steps';
import { rmsnorm } from '../kernels/norm';
import { rope } from '../kernels/rope';
import { add, embed, gather_rows, scatter_add, copy_rows } from '../kernels/elementwise';
import { route } from '../kernels/route';
import {
  ROLE_ATTN_NORM, ROLE_DOWN, ROLE_EMBED, ROLE_EXP_DOWN, ROLE_EXP_GATE_UP, ROLE_FFN_NORM, ROLE_FINAL_NORM, ROLE_GATE_UP,
  ROLE_KV_A, ROLE_KV_A_NORM, ROLE_LM_HEAD, ROLE_O_PROJ, ROLE_Q_A, ROLE_Q_A_NORM, ROLE_Q_B, ROLE_Q_PROJ, ROLE_ROPE_COS,
  ROLE_ROPE_SIN, ROLE_ROUTER, ROLE_ROUTER_BIAS, ROLE_SH_DOWN, ROLE_SH_GATE_UP, ROLE_W_UK_T, ROLE_W_UV,
} from '../constants';

const MAGIC: i32 = 0x32575744; // "DWW2"

function fail(msg: string): void {
  process.stderr.write('deepwasm-wasi: ' + msg + '\n');
  process.exit(1);
}
/** All of stdin, in a buffer grown by doubling. */
function readStdin(): Uint8Array {
  let cap = 1 << 20;
  let buf = new Uint8Array(cap);
  let len = 0;
  const iov = changetype<iovec>(heap.alloc(offsetof<iovec>()));
  const nread = heap.alloc(8);
  while (true) {
    if (len == cap) {
      const next = new Uint8Array(cap * 2);
      memory.copy(next.dataStart, buf.dataStart, len);
      buf = next;
      cap *= 2;
    }
    iov.buf = buf.dataStart + <usize>len;
    iov.buf_len = <usize>(cap - len);
    const err = fd_read(0, changetype<usize>(iov), 1, nread);
    if (err != 0) fail('reading stdin failed (errno ' + err.toString() + ')');
    const n = load<u32>(nread);
    if (n == 0) break;
    len += <i32>n;
  }
  return buf.subarray(0, len);
}

/** The config numbers, read in order. */
let table: usize = 0;
let cursor: i32 = 0;
@inline function next(): i32 {
  const v = load<i32>(table + (<usize>cursor << 2));
  cursor++;
  return v;
}
function nextF(): f32 {
  return reinterpret<f32>(next());
}

let base: usize = 0;
/** An address of the image moved to where the image's memory sits here (0 stays 0: "none"). */
function moved(p: i32): usize {
  return p == 0 ? 0 : base + <usize><u32>p;
}

function alloc(bytes: i32): usize {
  return (heap.alloc(<usize>bytes + 64) + 63) & ~<usize>63;
}

/** The image's directory: per weight role, layer, index, format, rows, cols, address and name. */
const dirRole = new Array<i32>();
const dirLayer = new Array<i32>();
const dirIndex = new Array<i32>();
const dirFmt = new Array<i32>();
const dirRows = new Array<i32>();
const dirCols = new Array<i32>();
const dirPtr = new Array<usize>();
const dirName = new Array<string>();

/** The entry of (role, layer, index), or -1. */
function find(role: i32, layer: i32, index: i32): i32 {
  for (let i = 0; i < dirRole.length; i++) if (dirRole[i] == role && dirLayer[i] == layer && dirIndex[i] == index) return i;
  return -1;
}

/** The entry of (role, layer, index), which must be there with rows x cols. */
function weight(role: i32, layer: i32, index: i32, rows: i32, cols: i32): i32 {
  const i = find(role, layer, index);
  if (i < 0) fail('the image has no weight of role ' + role.toString() + ' for layer ' + layer.toString() + ' index ' + index.toString());
  if (dirRows[i] != rows || dirCols[i] != cols) {
    fail(dirName[i] + ' is ' + dirRows[i].toString() + 'x' + dirCols[i].toString() + ' in the image; the config gives ' + rows.toString() + 'x' + cols.toString());
  }
  return i;
}

/** out[T, rows] = W x for the matrix of (role, layer, index). */
function linear(out: usize, role: i32, layer: i32, index: i32, x: usize, rows: i32, cols: i32, tokens: i32): void {
  const i = weight(role, layer, index, rows, cols);
  matmul(dirFmt[i], out, dirPtr[i], x, rows, cols, tokens);
}

function vec(role: i32, layer: i32, n: i32): usize {
  return dirPtr[weight(role, layer, 0, n, 1)];
}

function main(): void {
  const argv = process.argv;
  const ids = new Array<i32>();
  let steps = 8;
  for (let i = 1; i < argv.length; i++) {
    if (argv[i] == '--steps' && i + 1 < argv.length) steps = I32.parseInt(argv[++i]);
    else ids.push(I32.parseInt(argv[i]));
  }
  if (ids.length == 0) fail('usage: deepwasm-wasi.wasm <image ID... [--steps N]');
  const image = readStdin();
  if (image.length < 20 || load<i32>(image.dataStart) != MAGIC) fail('stdin is not a deepwasm image (tools/pack-wasi.mjs), or one of an older format');
  const configInts = load<i32>(image.dataStart + 4);
  const entries = load<i32>(image.dataStart + 8);
  const directoryBytes = load<i32>(image.dataStart + 12);
  const memBytes = load<i32>(image.dataStart + 16);
  const directory = 20 + configInts * 4;
  const start = directory + directoryBytes;
  if (image.length != start + memBytes) fail('image size does not match its header');
  base = alloc(memBytes);
  memory.copy(base, image.dataStart + <usize>start, <usize>memBytes);
  let at = image.dataStart + <usize>directory;
  for (let i = 0; i < entries; i++) {
    dirRole.push(load<i32>(at));
    dirLayer.push(load<i32>(at, 4));
    dirIndex.push(load<i32>(at, 8));
    dirFmt.push(load<i32>(at, 12));
    dirRows.push(load<i32>(at, 16));
    dirCols.push(load<i32>(at, 20));
    dirPtr.push(moved(load<i32>(at, 24)));
    const len = load<i32>(at, 28);
    dirName.push(String.UTF8.decodeUnsafe(at + 32, <usize>len));
    at += 32 + ((<usize>len + 3) & ~3);
  }

  const board = alloc(BOARD_BYTES);
  pool_init(board, 1);

  table = image.dataStart + 20;
  const hidden = next(), vocab = next(), layers = next(), heads = next();
  const nope = next(), ropeDim = next(), vDim = next(), rank = next(), qRank = next();
  const E = next(), topK = next(), nGroup = next(), topkGroup = next(), normTopk = next();
  const method = next(), scoring = next(), context = next(), half = next();
  const eps = nextF(), smScale = nextF(), routedScale = nextF();
  const cacheBase = moved(next()), scratch = moved(next());
  const embedAt = weight(ROLE_EMBED, -1, 0, vocab, hidden);
  const headAt = weight(ROLE_LM_HEAD, -1, 0, vocab, hidden);
  const normPtr = vec(ROLE_FINAL_NORM, -1, hidden);
  const cos = dirPtr[weight(ROLE_ROPE_COS, -1, 0, context, half)];
  const sin = dirPtr[weight(ROLE_ROPE_SIN, -1, 0, context, half)];
  for (let i = 0; i < ids.length; i++) if (ids[i] < 0 || ids[i] >= vocab) fail('token id ' + ids[i].toString() + ' is outside the vocabulary');

  const maxTokens = ids.length;
  if (ids.length + steps > context) fail('prompt and steps exceed the image context length');
  const qDim = nope + ropeDim;
  const latent = rank + ropeDim;
  // The widest feed-forward, from the gate/up matrices the image holds.
  let inter = 0;
  for (let i = 0; i < entries; i++) {
    const r = dirRole[i];
    if (r == ROLE_GATE_UP || r == ROLE_EXP_GATE_UP || r == ROLE_SH_GATE_UP) inter = max(inter, dirRows[i] / 2);
  }
  const idBuf = alloc(maxTokens * 4);
  const x = alloc(maxTokens * hidden * 4);
  const h = alloc(maxTokens * hidden * 4);
  const y = alloc(maxTokens * hidden * 4);
  const q = alloc(maxTokens * heads * qDim * 4);
  const qa = alloc(maxTokens * max(qRank, 1) * 4);
  const kv = alloc(maxTokens * latent * 4);
  const qNope = alloc(maxTokens * nope * 4);
  const qLat = alloc(maxTokens * heads * rank * 4);
  const oLat = alloc(maxTokens * heads * rank * 4);
  const headOut = alloc(maxTokens * vDim * 4);
  const attn = alloc(maxTokens * heads * vDim * 4);
  const gu = alloc(maxTokens * 2 * inter * 4);
  const act = alloc(maxTokens * inter * 4);
  const rlogits = alloc(maxTokens * max(E, 1) * 4);
  const chosen = alloc(maxTokens * max(topK, 1) * 4);
  const weights = alloc(maxTokens * max(topK, 1) * 4);
  const rscratch = alloc((2 * E + nGroup + 1) * 4);
  const rows = alloc(maxTokens * max(topK, 1) * 4);
  const rowWeights = alloc(maxTokens * max(topK, 1) * 4);
  const gathered = alloc(maxTokens * hidden * 4);
  const expertOut = alloc(maxTokens * hidden * 4);
  const logits = alloc(vocab * 4);
  const starts = new Int32Array(E + 1);
  const cur = new Int32Array(E + 1);

  const out = new Array<i32>();
  let pos0 = 0;
  let tokens = ids.length;
  for (let i = 0; i < tokens; i++) store<i32>(idBuf + (<usize>i << 2), ids[i]);
  for (let step = 0; step <= steps; step++) {
    embed(dirFmt[embedAt], x, dirPtr[embedAt], idBuf, tokens, hidden);
    for (let l = 0; l < layers; l++) {
      const cache = cacheBase + (<usize>l * <usize>context * <usize>latent << 2);
      rmsnorm(h, hidden, x, hidden, vec(ROLE_ATTN_NORM, l, hidden), hidden, tokens, eps);
      // Attention (host/model/attention.ts).
      if (qRank == 0) {
        linear(q, ROLE_Q_PROJ, l, 0, h, heads * qDim, hidden, tokens);
      } else {
        linear(qa, ROLE_Q_A, l, 0, h, qRank, hidden, tokens);
        rmsnorm(qa, qRank, qa, qRank, vec(ROLE_Q_A_NORM, l, qRank), qRank, tokens, eps);
        linear(q, ROLE_Q_B, l, 0, qa, heads * qDim, qRank, tokens);
      }
      rope(q + (<usize>nope << 2), tokens, heads, heads * qDim, qDim, cos, sin, pos0, half);
      linear(kv, ROLE_KV_A, l, 0, h, latent, hidden, tokens);
      const kvn = vec(ROLE_KV_A_NORM, l, rank);
      const crow = cache + (<usize>pos0 * <usize>latent << 2);
      rmsnorm(crow, latent, kv, latent, kvn, rank, tokens, eps);
      copy_rows(crow + (<usize>rank << 2), latent, kv + (<usize>rank << 2), latent, ropeDim, tokens);
      rope(crow + (<usize>rank << 2), tokens, 1, latent, 0, cos, sin, pos0, half);
      // Absorbed kv_b, one matmul per head (host/model/per-head.ts): q_lat[h] = W_UK^T[h] q_nope[:, h],
      // the latent core, then attn[:, h] = W_UV[h] o_lat[h].
      for (let hd = 0; hd < heads; hd++) {
        copy_rows(qNope, nope, q + (<usize>(hd * qDim) << 2), heads * qDim, nope, tokens);
        linear(qLat + (<usize>(hd * tokens * rank) << 2), ROLE_W_UK_T, l, hd, qNope, rank, nope, tokens);
      }
      mla_attention(oLat, qLat, q, cache, scratch, tokens, heads, nope, ropeDim, rank, pos0, smScale);
      for (let hd = 0; hd < heads; hd++) {
        linear(headOut, ROLE_W_UV, l, hd, oLat + (<usize>(hd * tokens * rank) << 2), vDim, rank, tokens);
        copy_rows(attn + (<usize>(hd * vDim) << 2), heads * vDim, headOut, vDim, vDim, tokens);
      }
      linear(y, ROLE_O_PROJ, l, 0, attn, hidden, heads * vDim, tokens);
      add(x, y, tokens * hidden);
      rmsnorm(h, hidden, x, hidden, vec(ROLE_FFN_NORM, l, hidden), hidden, tokens, eps);
      // Feed-forward (host/model/mlp.ts, moe.ts): a layer with a router is a mixture of experts.
      if (find(ROLE_ROUTER, l, 0) < 0) {
        mlp(y, h, tokens, ROLE_GATE_UP, ROLE_DOWN, l, 0, hidden, gu, act);
      } else {
        const biasAt = find(ROLE_ROUTER_BIAS, l, 0);
        const bias: usize = biasAt < 0 ? 0 : dirPtr[weight(ROLE_ROUTER_BIAS, l, 0, E, 1)];
        linear(rlogits, ROLE_ROUTER, l, 0, h, E, hidden, tokens);
        route(rlogits, tokens, E, bias, method, scoring, nGroup, topkGroup, topK, normTopk, routedScale, chosen, weights, rscratch);
        const pairs = tokens * topK;
        starts.fill(0);
        for (let p = 0; p < pairs; p++) starts[load<i32>(chosen + (<usize>p << 2)) + 1]++;
        for (let e = 0; e < E; e++) {
          starts[e + 1] += starts[e];
          cur[e] = starts[e];
        }
        for (let p = 0; p < pairs; p++) {
          const at = cur[load<i32>(chosen + (<usize>p << 2))]++;
          store<i32>(rows + (<usize>at << 2), p / topK);
          store<f32>(rowWeights + (<usize>at << 2), load<f32>(weights + (<usize>p << 2)));
        }
        if (find(ROLE_SH_GATE_UP, l, 0) >= 0) mlp(y, h, tokens, ROLE_SH_GATE_UP, ROLE_SH_DOWN, l, 0, hidden, gu, act);
        else memory.fill(y, 0, <usize>(tokens * hidden) << 2);
        for (let e = 0; e < E; e++) {
          const n = starts[e + 1] - starts[e];
          if (n == 0) continue;
          gather_rows(gathered, h, rows + (<usize>starts[e] << 2), n, hidden);
          mlp(expertOut, gathered, n, ROLE_EXP_GATE_UP, ROLE_EXP_DOWN, l, e, hidden, gu, act);
          scatter_add(y, expertOut, rows + (<usize>starts[e] << 2), rowWeights + (<usize>starts[e] << 2), n, hidden);
        }
      }
      add(x, y, tokens * hidden);
    }
    const last = x + (<usize>(tokens - 1) * <usize>hidden << 2);
    rmsnorm(h, hidden, last, hidden, normPtr, hidden, 1, eps);
    matmul(dirFmt[headAt], logits, dirPtr[headAt], h, vocab, hidden, 1);
    pos0 += tokens;
    let best = 0;
    let bestV = load<f32>(logits);
    for (let i = 1; i < vocab; i++) {
      const v = load<f32>(logits + (<usize>i << 2));
      if (v > bestV) {
        bestV = v;
        best = i;
      }
    }
    if (step == steps) {
      let sum: f64 = 0;
      for (let i = 0; i < vocab; i++) sum += <f64>load<f32>(logits + (<usize>i << 2));
      process.stdout.write('ids: ' + out.join(' ') + '\n');
      process.stdout.write('checksum: ' + sum.toString() + '\n');
      break;
    }
    out.push(best);
    store<i32>(idBuf, best);
    tokens = 1;
  }
}

main();

/** out[T, hidden] = down(silu(gate x) * up x), with the gate/up and down matrices of (role, layer, index). */
function mlp(out: usize, x: usize, tokens: i32, gateUp: i32, down: i32, layer: i32, index: i32, hidden: i32, gu: usize, act: usize): void {
  const g = find(gateUp, layer, index);
  if (g < 0) fail('the image has no gate/up matrix (role ' + gateUp.toString() + ') for layer ' + layer.toString() + ' index ' + index.toString());
  const inter = dirRows[g] / 2;
  linear(gu, gateUp, layer, index, x, 2 * inter, hidden, tokens);
  silu_mul(act, gu, inter, tokens);
  linear(out, down, layer, index, act, hidden, inter, tokens);
}
