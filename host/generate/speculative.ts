// Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a draft proposes k tokens, the model runs
// its last token and all k in one forward() and keeps the longest prefix it agrees with, then one token of
// its own, so every step yields 1 to k + 1 tokens for one pass over the model's weights. Greedy keeps a draft
// token when it is the model's argmax; sampling keeps it with probability min(1, p/q) and on rejection draws
// from max(0, p - q), so the output is distributed as plain sampling. The cache is rolled back with truncate.
import type { ModelBackend, Sequence } from '../model/backend.js';
import type { Draft, Proposal } from './drafts.js';
import type { SamplingSettings } from './options.js';
import { mulberry32 } from './rng.js';
import { drawFrom, type Sampler } from './sampler.js';

/** How often the model kept each draft position. */
export interface DraftStats {
  /** proposed[j]: steps that proposed a (j+1)-th draft token; accepted[j]: those that kept it. */
  proposed: number[];
  accepted: number[];
}

const NONE: Proposal = { tokens: [], q: [] };

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

export class Speculation {
  readonly stats: DraftStats;
  /** Every token of the sequence: the prompt and those accepted so far (the model has run all but the last). */
  private readonly tokens: number[] = [];
  /** The model's hidden states of the tokens it ran since the draft last proposed, when the draft needs them. */
  private hidden: Float32Array | null = null;
  private readonly random: () => number;

  constructor(
    private readonly model: ModelBackend,
    private readonly draft: Draft,
    /** Most draft tokens per step. */
    private readonly k: number,
    private readonly settings: SamplingSettings,
  ) {
    this.stats = { proposed: new Array(k).fill(0), accepted: new Array(k).fill(0) };
    this.random = mulberry32((settings.seed ^ 0x27d4eb2f) >>> 0);
  }

  /** The prompt's pass: its last row's logits, keeping the hidden states the draft needs. */
  prefill(sequence: Sequence, prompt: readonly number[]): Float32Array {
    this.tokens.push(...prompt);
    const hidden = this.draft.needsHidden ? new Float32Array(prompt.length * this.model.config.hiddenSize) : undefined;
    const logits = this.model.forward([{ sequence, tokens: prompt, hidden }])[0];
    this.hidden = hidden ?? null;
    return logits;
  }

  /** Records the token chosen from the prompt's logits. */
  first(id: number): void {
    this.tokens.push(id);
  }

  /**
   * One step after the last token: draft, verify, keep. Returns the 1 to k + 1 tokens it yields (at most
   * `budget`), already passed to the sampler's accept(); `onLogits` sees the model's logits each was chosen
   * from, before the sampler touched them.
   */
  step(sequence: Sequence, sampler: Sampler, budget: number, onLogits?: (row: Float32Array) => void): number[] {
    const { model } = this;
    const vocab = model.config.vocabSize;
    const dim = model.config.hiddenSize;
    const k = Math.min(this.k, budget - 1, model.contextLength - sequence.position - 1);
    const proposal = k > 0 ? this.draft.propose(this.tokens, this.hidden, k) : NONE;
    const drafts = proposal.tokens;
    const feed = [this.tokens[this.tokens.length - 1], ...drafts];
    const hidden = this.draft.needsHidden ? new Float32Array(feed.length * dim) : undefined;
    const start = sequence.position;
    const rows = model.forward([{ sequence, tokens: feed, logits: 'all', hidden }])[0];
    const out: number[] = [];
    const greedy = this.settings.temperature === 0;
    for (let j = 0; j <= drafts.length; j++) {
      const row = rows.subarray(j * vocab, (j + 1) * vocab);
      onLogits?.(row);
      // Greedy keeps a draft token when it is the model's own choice; past the drafts the model picks as usual.
      const id = j === drafts.length || greedy ? sampler.sample(row) : this.verify(sampler.probabilities(row), drafts[j], proposal.q[j]);
      if (j < drafts.length) this.stats.proposed[j]++;
      sampler.accept(id);
      out.push(id);
      if (j === drafts.length || id !== drafts[j]) break;
      this.stats.accepted[j]++;
    }
    model.truncate(sequence, start + out.length);
    this.tokens.push(...out);
    const kept = hidden ? hidden.subarray(0, out.length * dim) : null;
    // Without a proposal the draft has not consumed the earlier states yet.
    this.hidden = kept && proposal === NONE && this.hidden ? concat(this.hidden, kept) : kept;
    return out;
  }

  /** The speculative-sampling rule for draft token d drawn from q, against the model's p: d, or a draw from max(0, p - q). */
  private verify(p: Float32Array, d: number, q: Float32Array): number {
    if (this.random() * q[d] < p[d]) return d;
    let total = 0;
    for (let i = 0; i < p.length; i++) {
      const r = p[i] > q[i] ? p[i] - q[i] : 0;
      p[i] = r;
      total += r;
    }
    return drawFrom(p, this.random() * total);
  }

  free(): void {
    this.draft.free();
  }
}
