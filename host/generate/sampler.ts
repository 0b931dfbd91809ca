import { fail } from '../errors.js';
import type { SamplingSettings } from './options.js';
import { mulberry32 } from './rng.js';

/** Top-p first looks among tokens at least this likely, then 16 times less likely ones, and so on. */
const FIRST_THRESHOLD = 1 / 16;
const LAST_THRESHOLD = 2 ** -20;
/** Top-p sorts keys packing a probability's float32 bits above the id's bits: 31 + 21 bits fit a float64 exactly. */
const ID_BITS = 21;
const ID_RANGE = 2 ** ID_BITS;

/**
 * Picks next tokens from logits: penalties, then greedy argmax (temperature 0) or temperature, top-k, top-p, min-p
 * (Hugging Face's order) and a draw from the seeded PRNG. Works on the logits in place and allocates its vocabulary-
 * sized buffers once, so a token costs no allocation.
 */
export class Sampler {
  /** Token ids kept by top-k. */
  private readonly candidates: Uint32Array;
  /** Sort keys of top-p. */
  private readonly keys: Float64Array;
  /** Tokens of the prompt and output, for the repetition penalty. */
  private readonly seen: Uint8Array;
  private readonly seenIds: number[] = [];
  /** How often each token was generated, for the frequency and presence penalties. */
  private readonly counts: Uint32Array;
  private readonly countedIds: number[] = [];
  private readonly random: () => number;

  constructor(
    readonly vocabSize: number,
    readonly settings: SamplingSettings,
    promptIds: ArrayLike<number> = [],
  ) {
    if (vocabSize > ID_RANGE) fail(`a vocabulary of ${vocabSize} tokens is more than the sampler handles (${ID_RANGE})`);
    this.candidates = new Uint32Array(settings.topK > 0 ? vocabSize : 0);
    this.keys = new Float64Array(settings.topP < 1 ? vocabSize : 0);
    this.seen = new Uint8Array(vocabSize);
    this.counts = new Uint32Array(vocabSize);
    this.random = mulberry32(settings.seed);
    for (let i = 0; i < promptIds.length; i++) this.see(promptIds[i]);
  }

  /** Records a generated token for the penalties. */
  accept(id: number): void {
    this.see(id);
    if (this.counts[id]++ === 0) this.countedIds.push(id);
  }

  /** Applies the repetition, frequency and presence penalties to the logits in place. */
  penalize(logits: Float32Array): void {
    const { repetitionPenalty: r, frequencyPenalty: f, presencePenalty: p } = this.settings;
    if (r !== 1) {
      for (const id of this.seenIds) {
        const v = logits[id];
        logits[id] = v > 0 ? v / r : v * r;
      }
    }
    if (f !== 0 || p !== 0) for (const id of this.countedIds) logits[id] -= this.counts[id] * f + p;
  }

  /**
   * Turns the logits, in place, into the distribution the next token is drawn from: every filter applied, removed
   * tokens at 0, the rest summing to 1 (one-hot when greedy). Returns the same array.
   */
  probabilities(logits: Float32Array): Float32Array {
    this.penalize(logits);
    if (this.settings.temperature === 0) {
      const best = argmax(logits);
      logits.fill(0);
      logits[best] = 1;
      return logits;
    }
    const factor = 1 / this.filter(logits);
    for (let i = 0; i < logits.length; i++) logits[i] *= factor;
    return logits;
  }

  /** The next token id; consumes one number from the PRNG unless greedy. */
  sample(logits: Float32Array): number {
    this.penalize(logits);
    if (this.settings.temperature === 0) return argmax(logits);
    // Scaling the draw instead of the probabilities saves a pass over the vocabulary.
    return drawFrom(logits, this.random() * this.filter(logits));
  }

  /** Temperature, top-k, softmax, top-p and min-p; leaves unnormalized probabilities and returns their sum. */
  private filter(x: Float32Array): number {
    const { temperature, topK, topP, minP } = this.settings;
    // NaN compares false everywhere below, so it is dropped along with -Infinity.
    let max = -Infinity;
    for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i];
    if (!Number.isFinite(max)) fail(`the largest logit is ${max} (every logit -Infinity or NaN, or one +Infinity): there is no token to sample`);
    if (topK > 0) this.topK(x, topK);
    // Shifting by the maximum before dividing keeps a tiny temperature from overflowing to Infinity.
    let total = 0;
    for (let i = 0; i < x.length; i++) {
      const p = Math.exp((x[i] - max) / temperature);
      x[i] = p === p ? p : 0;
      total += x[i];
    }
    if (topP < 1) total = this.nucleus(x, topP * total);
    if (minP > 0) {
      const floor = minP * x[argmax(x)];
      total = 0;
      for (let i = 0; i < x.length; i++) {
        if (x[i] < floor) x[i] = 0;
        total += x[i];
      }
    }
    return total;
  }

  /** Sets all but the k highest logits to -Infinity; the order is the same before and after temperature. */
  private topK(x: Float32Array, k: number): void {
    const cand = this.candidates;
    let n = 0;
    for (let i = 0; i < x.length; i++) if (x[i] > -Infinity) cand[n++] = i;
    if (k >= n) return;
    selectBest(cand, n, k, x);
    for (let j = k; j < n; j++) x[cand[j]] = -Infinity;
  }

  /**
   * Keeps the most likely tokens (lower ids first on ties) while the ones before them hold less than `mass`, the
   * nucleus share of the unnormalized probabilities; returns the mass kept.
   */
  private nucleus(x: Float32Array, mass: number): number {
    const keys = this.keys;
    const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
    const scale = mass / this.settings.topP;
    // Sorting the whole vocabulary costs more than the forward pass of a small model. The tokens at or above a
    // threshold come first in sorted order, so once they hold the mass the nucleus lies among them.
    let threshold = FIRST_THRESHOLD;
    let n = 0;
    for (;;) {
      const floor = threshold * scale;
      let held = 0;
      n = 0;
      for (let i = 0; i < x.length; i++) {
        if (x[i] > 0 && x[i] >= floor) {
          // Positive floats order as their bits do; the reversed id puts lower ids last, so first from the top.
          keys[n++] = bits[i] * ID_RANGE + (ID_RANGE - 1 - i);
          held += x[i];
        }
      }
      if (held >= mass || threshold === 0) break;
      threshold = threshold > LAST_THRESHOLD ? threshold / 16 : 0;
    }
    keys.subarray(0, n).sort();
    let kept = 0;
    let j = n - 1;
    for (; j >= 0 && kept < mass; j--) kept += x[ID_RANGE - 1 - (keys[j] % ID_RANGE)];
    const floor = threshold * scale;
    for (let i = 0; i < x.length; i++) if (x[i] < floor) x[i] = 0;
    for (; j >= 0; j--) x[ID_RANGE - 1 - (keys[j] % ID_RANGE)] = 0;
    return kept;
  }

  private see(id: number): void {
    if (this.seen[id] === 1) return;
    this.seen[id] = 1;
    this.seenIds.push(id);
  }
}

/** Index of the largest value; the lowest such index on ties, like torch.argmax. */
export function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/**
 * Reorders ids[0, n) so the k best (highest value, lower id on ties) come first: Hoare's selection (Wirth's
 * variant), linear on average, without a vocabulary-sized sort.
 */
function selectBest(ids: Uint32Array, n: number, k: number, x: Float32Array): void {
  const better = (a: number, b: number): boolean => x[a] > x[b] || (x[a] === x[b] && a < b);
  const target = k - 1;
  let lo = 0;
  let hi = n - 1;
  while (lo < hi) {
    const pivot = ids[target];
    let i = lo;
    let j = hi;
    do {
      while (better(ids[i], pivot)) i++;
      while (better(pivot, ids[j])) j--;
      if (i <= j) {
        const t = ids[i];
        ids[i++] = ids[j];
        ids[j--] = t;
      }
    } while (i <= j);
    if (j < target) lo = i;
    if (target < i) hi = j;
  }
}

/**
 * The index a draw lands on in weights that need not sum to 1: the first i whose running sum passes `target`
 * (a draw in [0, sum)), or the last nonzero weight when rounding leaves the target past the end.
 */
export function drawFrom(weights: ArrayLike<number>, target: number): number {
  let cum = 0;
  let last = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i] === 0) continue;
    cum += weights[i];
    last = i;
    if (target < cum) return i;
  }
  return last;
}
