// Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a draft proposes k tokens, the model runs
// its last token and all k in one forward() and keeps the longest prefix it agrees with, then one token of
// its own, so every step yields 1 to k + 1 tokens for one pass over the model's weights. Greedy keeps a draft
// token when it is the model's argmax; sampling keeps it with probability min(1, p/q) and on rejection draws
// from max(0, p - q), so the output is distributed as plain sampling. The cache is rolled back with truncate.
// A step is split in two (draftEntry, then settle on that entry's rows) so that the server can put the
// verifying entry into its batched forward() beside other sequences'; step() runs both around one forward().
import type { BatchEntry, LogitsRows, ModelBackend, Sequence } from '../model/backend.js';
import type { Draft, Proposal } from './drafts.js';
import type { SamplingSettings } from './options.js';
import { mulberry32 } from './rng.js';
import { drawFrom } from './sampler.js';

/** How often the model kept each draft position. */
export interface DraftStats {
  /** proposed[j]: steps that proposed a (j+1)-th draft token; accepted[j]: those that kept it. */
  proposed: number[];
  accepted: number[];
}

const NONE: Proposal = { tokens: [], q: [] };

function concat(parts: readonly Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
}

/**
 * What picks the model's token at each verified row: a Sampler, or a caller's wrapper of one (the server
 * masks rows for a JSON grammar and records log-probabilities). Rows come in order, each after the token
 * before it was accepted, so penalties and grammars see every earlier token, as in plain decoding.
 */
export interface TokenChooser {
  /** The model's own pick from the row: greedy, or a plain draw past the drafts. */
  sample(row: Float32Array): number;
  /** The distribution the model's pick is drawn from (the row, in place), for the speculative-sampling rule. */
  probabilities(row: Float32Array): Float32Array;
  /** Records the token kept; false ends the step after it (the generation is over). */
  accept(id: number): boolean | void;
}

/** A verifying entry in flight: what settle() needs of it. */
interface Pending {
  sequence: Sequence;
  /** The sequence's position before the entry. */
  start: number;
  proposal: Proposal;
  hidden: Float32Array | undefined;
}

export class Speculation {
  readonly stats: DraftStats;
  /** Every token of the sequence: the prompt and those accepted so far (the model has run all but the last). */
  private readonly tokens: number[] = [];
  /** The model's hidden states of the tokens it ran since the draft last proposed, in order, when the draft needs them. */
  private hidden: Float32Array[] = [];
  private pending: Pending | null = null;
  private readonly random: () => number;

  constructor(
    private readonly model: ModelBackend,
    readonly draft: Draft,
    /** Most draft tokens per step. */
    private readonly k: number,
    private readonly settings: SamplingSettings,
  ) {
    this.stats = { proposed: new Array(k).fill(0), accepted: new Array(k).fill(0) };
    this.random = mulberry32((settings.seed ^ 0x27d4eb2f) >>> 0);
  }

  /** The entry of a piece of the prompt (all of it, or a chunk), with room for the hidden states the draft needs. */
  promptEntry(sequence: Sequence, tokens: ArrayLike<number>, logits: LogitsRows = 'last'): BatchEntry {
    for (let i = 0; i < tokens.length; i++) this.tokens.push(tokens[i]);
    const hidden = this.draft.needsHidden ? new Float32Array(tokens.length * this.model.config.hiddenSize) : undefined;
    if (hidden) this.hidden.push(hidden);
    return { sequence, tokens, logits, hidden };
  }

  /** The prompt's pass: its last row's logits, keeping the hidden states the draft needs. */
  prefill(sequence: Sequence, prompt: readonly number[]): Float32Array {
    return this.model.forward([this.promptEntry(sequence, prompt)])[0];
  }

  /** Records the token chosen from the prompt's logits. */
  first(id: number): void {
    this.tokens.push(id);
  }

  /** Every token of the sequence so far: what the draft proposes after. */
  get history(): readonly number[] {
    return this.tokens;
  }

  /** Draft tokens the next step verifies: at most k, `budget` - 1 and what the context holds after the last token. */
  draftCount(sequence: Sequence, budget: number): number {
    return Math.max(0, Math.min(this.k, budget - 1, this.model.contextLength - sequence.position - 1));
  }

  /**
   * Drafts (unless given the draft's proposal of draftCount() tokens after history, made together with other
   * sequences') and returns the entry that verifies them: the last token and the drafts, every row's logits.
   * Its rows go to settle().
   */
  draftEntry(sequence: Sequence, budget: number, proposed?: Proposal): BatchEntry {
    const { model } = this;
    const k = this.draftCount(sequence, budget);
    // Without a proposal the draft has not consumed the earlier states yet.
    const proposal = k === 0 ? NONE : (proposed ?? this.draft.propose(this.tokens, this.hidden.length > 0 ? concat(this.hidden) : null, k));
    if (proposal !== NONE) this.hidden = [];
    const tokens = [this.tokens[this.tokens.length - 1], ...proposal.tokens];
    const hidden = this.draft.needsHidden ? new Float32Array(tokens.length * model.config.hiddenSize) : undefined;
    this.pending = { sequence, start: sequence.position, proposal, hidden };
    return { sequence, tokens, logits: 'all', hidden };
  }

  /**
   * Keeps what the model agrees with, from the rows of draftEntry()'s entry: the 1 to k + 1 tokens it
   * yields, each passed to the chooser's accept(), and rolls the cache back to them. `onLogits` sees the
   * model's logits each was chosen from, before the chooser touched them.
   */
  settle(rows: Float32Array, chooser: TokenChooser, onLogits?: (row: Float32Array) => void): number[] {
    const p = this.pending;
    if (!p) throw new Error('settle() without a draftEntry() before it');
    this.pending = null;
    const vocab = this.model.config.vocabSize;
    const drafts = p.proposal.tokens;
    const out: number[] = [];
    const greedy = this.settings.temperature === 0;
    for (let j = 0; j <= drafts.length; j++) {
      const row = rows.subarray(j * vocab, (j + 1) * vocab);
      onLogits?.(row);
      // Greedy keeps a draft token when it is the model's own choice; past the drafts the model picks as usual.
      const id = j === drafts.length || greedy ? chooser.sample(row) : this.verify(chooser.probabilities(row), drafts[j], p.proposal.q[j]);
      const goOn = chooser.accept(id) !== false;
      out.push(id);
      if (j === drafts.length) break;
      this.stats.proposed[j]++;
      if (id !== drafts[j]) break;
      this.stats.accepted[j]++;
      if (!goOn) break;
    }
    this.model.truncate(p.sequence, p.start + out.length);
    this.tokens.push(...out);
    if (p.hidden) this.hidden.push(p.hidden.subarray(0, out.length * this.model.config.hiddenSize));
    return out;
  }

  /**
   * One step after the last token: draft, verify, keep. Returns the 1 to k + 1 tokens it yields (at most
   * `budget`), already passed to the sampler's accept(); `onLogits` as in settle().
   */
  step(sequence: Sequence, sampler: TokenChooser, budget: number, onLogits?: (row: Float32Array) => void): number[] {
    const entry = this.draftEntry(sequence, budget);
    return this.settle(this.model.forward([entry])[0], sampler, onLogits);
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
