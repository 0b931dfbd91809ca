// WASI build of the core (build/deepwasm-wasi.wasm, asconfig.wasi.json): a portable command that runs
// the model of a packed image (written by `deepwasm pack`, host/model/pack.ts) on one thread.
//   deepwasm-wasi.wasm <image  ID... [--steps N]
// reads the image from stdin, runs the prompt ids through the model (prefill), then N greedy decode
// steps, and prints "ids: ..." (the greedy ids) and "checksum: ..." (sum of the last logits).
// The image is the host's wasm memory from address 0 to the end of the model's arena, preceded by a
// table of i32s (config numbers, then per layer formats and pointers in that memory); the memory is
// copied to a 64-aligned base here and every pointer is moved by that base. Kernels run single
// threaded: pool_init(board, 1) makes parallel() run each task inline.
import { fd_read, iovec } from 'bindings/wasi_snapshot_preview1';
import { BOARD_BYTES } from '../board';
import { pool_init } from '../pool';
import { matmul, mla_attention, silu_mul } from '../steps';
import { rmsnorm } from '../kernels/norm';
import { rope } from '../kernels/rope';
import { add, embed, gather_rows, scatter_add, copy_rows } from '../kernels/elementwise';
import { route } from '../kernels/route';

const MAGIC: i32 = 0x31575744; // "DWW1"

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
/** A pointer of the image moved to where the image sits here (0 stays 0: "none"). */
function ptr(): usize {
  const p = <usize><u32>next();
  return p == 0 ? 0 : base + p;
}

function alloc(bytes: i32): usize {
  return (heap.alloc(<usize>bytes + 64) + 63) & ~<usize>63;
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
  if (image.length < 16 || load<i32>(image.dataStart) != MAGIC) fail('stdin is not a deepwasm image (deepwasm pack)');
  const tableInts = load<i32>(image.dataStart + 4);
  const memBytes = load<i32>(image.dataStart + 8);
  const start = 12 + tableInts * 4;
  if (image.length != start + memBytes) fail('image size does not match its header');
  table = image.dataStart + 12;
  base = alloc(memBytes);
  memory.copy(base, image.dataStart + <usize>start, <usize>memBytes);

  const board = alloc(BOARD_BYTES);
  pool_init(board, 1);

  const hidden = next(), vocab = next(), layers = next(), heads = next();
  const nope = next(), ropeDim = next(), vDim = next(), rank = next(), qRank = next();
  const E = next(), topK = next(), nGroup = next(), topkGroup = next(), normTopk = next();
  const method = next(), scoring = next(), context = next(), half = next();
  const eps = nextF(), smScale = nextF(), routedScale = nextF();
  const denseInter = next(), expertInter = next(), sharedInter = next();
  const embedFmt = next(), embedPtr = ptr(), normPtr = ptr(), headFmt = next(), headPtr = ptr();
  const cos = ptr(), sin = ptr(), scratch = ptr();
  const layerTable = cursor;
  for (let i = 0; i < ids.length; i++) if (ids[i] < 0 || ids[i] >= vocab) fail('token id ' + ids[i].toString() + ' is outside the vocabulary');

  const maxTokens = ids.length;
  if (ids.length + steps > context) fail('prompt and steps exceed the image context length');
  const qDim = nope + ropeDim;
  const latent = rank + ropeDim;
  const inter = max(denseInter, max(expertInter, sharedInter));
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
    embed(embedFmt, x, embedPtr, idBuf, tokens, hidden);
    cursor = layerTable;
    for (let l = 0; l < layers; l++) {
      const isMoe = next(), attnNorm = ptr(), ffnNorm = ptr(), cache = ptr();
      rmsnorm(h, hidden, x, hidden, attnNorm, hidden, tokens, eps);
      // Attention (host/model/attention.ts).
      if (qRank == 0) {
        const f = next(), p = ptr();
        matmul(f, q, p, h, heads * qDim, hidden, tokens);
      } else {
        const af = next(), ap = ptr(), an = ptr(), bf = next(), bp = ptr();
        matmul(af, qa, ap, h, qRank, hidden, tokens);
        rmsnorm(qa, qRank, qa, qRank, an, qRank, tokens, eps);
        matmul(bf, q, bp, qa, heads * qDim, qRank, tokens);
      }
      rope(q + (<usize>nope << 2), tokens, heads, heads * qDim, qDim, cos, sin, pos0, half);
      const kvf = next(), kvp = ptr(), kvn = ptr();
      matmul(kvf, kv, kvp, h, latent, hidden, tokens);
      const crow = cache + (<usize>pos0 * <usize>latent << 2);
      rmsnorm(crow, latent, kv, latent, kvn, rank, tokens, eps);
      copy_rows(crow + (<usize>rank << 2), latent, kv + (<usize>rank << 2), latent, ropeDim, tokens);
      rope(crow + (<usize>rank << 2), tokens, 1, latent, 0, cos, sin, pos0, half);
      // Absorbed kv_b, one matmul per head (host/model/per-head.ts): q_lat[h] = W_UK^T[h] q_nope[:, h],
      // the latent core, then attn[:, h] = W_UV[h] o_lat[h].
      for (let hd = 0; hd < heads; hd++) {
        const f = next(), p = ptr();
        copy_rows(qNope, nope, q + (<usize>(hd * qDim) << 2), heads * qDim, nope, tokens);
        matmul(f, qLat + (<usize>(hd * tokens * rank) << 2), p, qNope, rank, nope, tokens);
      }
      mla_attention(oLat, qLat, q, cache, scratch, tokens, heads, nope, ropeDim, rank, pos0, smScale);
      for (let hd = 0; hd < heads; hd++) {
        const f = next(), p = ptr();
        matmul(f, headOut, p, oLat + (<usize>(hd * tokens * rank) << 2), vDim, rank, tokens);
        copy_rows(attn + (<usize>(hd * vDim) << 2), heads * vDim, headOut, vDim, vDim, tokens);
      }
      const oF = next(), oP = ptr();
      matmul(oF, y, oP, attn, hidden, heads * vDim, tokens);
      add(x, y, tokens * hidden);
      rmsnorm(h, hidden, x, hidden, ffnNorm, hidden, tokens, eps);
      // Feed-forward (host/model/mlp.ts, moe.ts).
      if (isMoe == 0) {
        mlp(y, h, tokens, denseInter, hidden, gu, act);
      } else {
        const gf = next(), gp = ptr(), bias = ptr(), hasShared = next();
        matmul(gf, rlogits, gp, h, E, hidden, tokens);
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
        if (hasShared != 0) mlp(y, h, tokens, sharedInter, hidden, gu, act);
        else memory.fill(y, 0, <usize>(tokens * hidden) << 2);
        const expertTable = cursor;
        for (let e = 0; e < E; e++) {
          const n = starts[e + 1] - starts[e];
          if (n == 0) continue;
          cursor = expertTable + e * 4;
          gather_rows(gathered, h, rows + (<usize>starts[e] << 2), n, hidden);
          mlp(expertOut, gathered, n, expertInter, hidden, gu, act);
          scatter_add(y, expertOut, rows + (<usize>starts[e] << 2), rowWeights + (<usize>starts[e] << 2), n, hidden);
        }
        cursor = expertTable + E * 4;
      }
      add(x, y, tokens * hidden);
    }
    const last = x + (<usize>(tokens - 1) * <usize>hidden << 2);
    rmsnorm(h, hidden, last, hidden, normPtr, hidden, 1, eps);
    matmul(headFmt, logits, headPtr, h, vocab, hidden, 1);
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

/** out[T, hidden] = down(silu(gate x) * up x), the gate/up and down matrices read from the table. */
function mlp(out: usize, x: usize, tokens: i32, inter: i32, hidden: i32, gu: usize, act: usize): void {
  const gf = next(), gp = ptr(), df = next(), dp = ptr();
  matmul(gf, gu, gp, x, 2 * inter, hidden, tokens);
  silu_mul(act, gu, inter, tokens);
  matmul(df, out, dp, act, hidden, inter, tokens);
}
