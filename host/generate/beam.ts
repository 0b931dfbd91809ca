// Beam search as transformers' generate(num_beams=N, do_sample=False) does it (its vectorized _beam_search):
// each step keeps the 2N best continuations (beam score + log-softmax) of the N running beams; those of the
// top N that end (EOS or the token limit) become hypotheses scored sum / length ** length_penalty, the best N
// kept; the best N that did not end run on. Beams fork the prompt's cache, so memory is N sequences.
import { fail } from '../errors.js';
import type { ModelBackend, Sequence } from '../model/backend.js';
import { DEFAULT_MAX_TOKENS } from './options.js';
import type { FinishReason } from './generate.js';

export interface BeamOptions {
  /** Beams kept at each step, at least 1; the model must hold that many sequences (maxSequences). */
  numBeams: number;
  /** A finished hypothesis scores sum(log p) / length ** lengthPenalty (default 1; > 0 favours longer ones). */
  lengthPenalty?: number;
  /**
   * false (default): stop when no running beam can beat the worst of the N hypotheses at its current length;
   * true: stop as soon as N hypotheses have ended; 'never': only when none could beat them at the token limit.
   */
  earlyStopping?: boolean | 'never';
  /** Most tokens to generate (default 256); the context length also bounds it. */
  maxTokens?: number;
  /** Ids that end a hypothesis; default eos_token_id of config.json. */
  eosTokenIds?: readonly number[];
  signal?: AbortSignal;
}

export interface BeamResult {
  /** The best hypothesis' tokens, its end-of-sequence token included when one ended it. */
  tokens: number[];
  /** Its score: sum of log-probabilities / length ** lengthPenalty. */
  score: number;
  promptTokens: number;
  finishReason: FinishReason;
  /** Milliseconds for the prompt's forward pass, and for every later step of all beams together. */
  prefillMs: number;
  decodeMs: number;
}

/** What HF adds to a score to take a candidate out of the running (its -1e9). */
const OUT = -1e9;

interface Beam {
  seq: Sequence;
  tokens: number[];
  score: number;
}

interface Candidate {
  beam: number;
  token: number;
  score: number;
}

interface Hypothesis {
  tokens: number[];
  score: number;
}

/** Checks the options and fills in the defaults; errors name the options as `name` spells them. */
export function resolveBeamOptions(o: BeamOptions, name: (option: keyof BeamOptions) => string = (k) => k): Required<Omit<BeamOptions, 'eosTokenIds' | 'signal'>> {
  const { numBeams, lengthPenalty = 1, earlyStopping = false, maxTokens = DEFAULT_MAX_TOKENS } = o;
  if (!Number.isInteger(numBeams) || numBeams < 1) fail(`${name('numBeams')} must be a whole number >= 1, got ${String(numBeams)}`);
  if (typeof lengthPenalty !== 'number' || !Number.isFinite(lengthPenalty)) fail(`${name('lengthPenalty')} must be a finite number, got ${String(lengthPenalty)}`);
  if (earlyStopping !== true && earlyStopping !== false && earlyStopping !== 'never') {
    fail(`${name('earlyStopping')} must be true, false or 'never', got ${String(earlyStopping)}`);
  }
  if (!Number.isInteger(maxTokens) || maxTokens < 1) fail(`${name('maxTokens')} must be a whole number >= 1, got ${String(maxTokens)}`);
  return { numBeams, lengthPenalty, earlyStopping, maxTokens };
}

/** Beam search after `promptIds`; the model must have numBeams free sequences. */
export async function beamSearch(model: ModelBackend, promptIds: readonly number[], opts: BeamOptions): Promise<BeamResult> {
  const { numBeams: n, lengthPenalty, earlyStopping, maxTokens } = resolveBeamOptions(opts);
  if (promptIds.length === 0) fail('the prompt is empty: there is nothing to continue');
  if (n > model.maxSequences) {
    fail(`${n} beams need ${n} sequences, but the model was loaded with ${model.maxSequences} (maxSequences); load it with maxSequences >= ${n}`);
  }
  const eos = new Set(opts.eosTokenIds ?? model.config.eosTokenIds);
  const vocab = model.config.vocabSize;
  // The token limit in HF's terms: max_length - prompt length, here also what the context holds.
  const limit = Math.min(maxTokens, model.contextLength - promptIds.length);
  if (limit < 1) fail(`the prompt's ${promptIds.length} tokens fill the context (${model.contextLength}); nothing can be generated`);
  const keep = Math.max(2, 1 + eos.size) * n;
  const normalize = (score: number, length: number): number => score / length ** lengthPenalty;

  const start = performance.now();
  const first = model.createSequence();
  let running: Beam[] = [{ seq: first, tokens: [], score: 0 }];
  let rows = model.forward([{ sequence: first, tokens: promptIds }]);
  const prefillMs = performance.now() - start;
  let hypotheses: (Hypothesis | null)[] = new Array(n).fill(null);
  let improvable = true;
  let finishReason: FinishReason = 'length';
  try {
    for (let g = 0; ; g++) {
      const candidates = best(running, rows, keep, vocab);
      const atLimit = g + 1 >= limit;
      const ends = candidates.map((c) => atLimit || eos.has(c.token));
      const full = hypotheses.every((h) => h !== null) && earlyStopping === true;
      if (!full && improvable) {
        const fresh: Hypothesis[] = [];
        for (let k = 0; k < n; k++) {
          if (ends[k]) fresh.push({ tokens: [...running[candidates[k].beam].tokens, candidates[k].token], score: normalize(candidates[k].score, g + 1) });
        }
        hypotheses = mergeBest(hypotheses, fresh, n);
      }
      const next = candidates.filter((_, k) => !ends[k]).slice(0, n);
      const done = hypotheses.every((h) => h !== null);
      if (next.length > 0) {
        const length = earlyStopping === 'never' && lengthPenalty > 0 ? limit : g + 1;
        const worst = done ? Math.min(...hypotheses.map((h) => h!.score)) : OUT;
        improvable &&= normalize(next[0].score, length) > worst;
      }
      if (next.length < n || !improvable || (done && earlyStopping === true)) break;
      if (opts.signal?.aborted) {
        finishReason = 'abort';
        break;
      }
      running = reorder(model, running, next);
      rows = model.forward(running.map((b, j) => ({ sequence: b.seq, tokens: [next[j].token] })));
    }
  } finally {
    for (const b of running) model.free(b.seq);
  }
  const top = hypotheses[0] ?? { tokens: running[0].tokens, score: running[0].score };
  if (finishReason !== 'abort' && top.tokens.length > 0 && eos.has(top.tokens[top.tokens.length - 1])) finishReason = 'stop';
  return { tokens: top.tokens, score: top.score, promptTokens: promptIds.length, finishReason, prefillMs, decodeMs: performance.now() - start - prefillMs };
}

/**
 * The `keep` best continuations over all beams, best first, ties to the lower (beam, token) as torch.topk
 * gives them: beam score + log-softmax of the beam's logits, in float64.
 */
function best(running: readonly Beam[], rows: readonly Float32Array[], keep: number, vocab: number): Candidate[] {
  const out: Candidate[] = [];
  running.forEach((beam, b) => {
    const x = rows[b];
    let max = -Infinity;
    for (let i = 0; i < vocab; i++) if (x[i] > max) max = x[i];
    let sum = 0;
    for (let i = 0; i < vocab; i++) sum += Math.exp(x[i] - max);
    const shift = beam.score - max - Math.log(sum);
    // Only logits above the current keep-th best can enter, so most of the vocabulary is skipped.
    for (let i = 0; i < vocab; i++) {
      const score = x[i] + shift;
      if (out.length === keep && score <= out[keep - 1].score) continue;
      let at = out.length;
      while (at > 0 && out[at - 1].score < score) at--;
      out.splice(at, 0, { beam: b, token: i, score });
      if (out.length > keep) out.pop();
    }
  });
  return out;
}

/** The n best of the kept hypotheses and the fresh ones (kept ones first on ties); empty places stay null. */
function mergeBest(kept: readonly (Hypothesis | null)[], fresh: readonly Hypothesis[], n: number): (Hypothesis | null)[] {
  const all = [...kept.filter((h): h is Hypothesis => h !== null), ...fresh];
  all.sort((a, b) => b.score - a.score);
  const out: (Hypothesis | null)[] = all.slice(0, n);
  while (out.length < n) out.push(null);
  return out;
}

/**
 * The next step's beams: each chosen continuation takes its parent's sequence, the first child the sequence
 * itself and later ones a fork; parents with no child are freed first, so that at most N sequences exist.
 */
function reorder(model: ModelBackend, running: readonly Beam[], next: readonly Candidate[]): Beam[] {
  const used = new Set(next.map((c) => c.beam));
  running.forEach((b, i) => used.has(i) || model.free(b.seq));
  // Forks first: a parent's own sequence must still hold its cache when its other children copy it.
  const seqs = next.map((c, j) => (next.findIndex((d) => d.beam === c.beam) === j ? null : model.fork(running[c.beam].seq)));
  return next.map((c, j) => ({ seq: seqs[j] ?? running[c.beam].seq, tokens: [...running[c.beam].tokens, c.token], score: c.score }));
}
