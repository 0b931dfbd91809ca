// The two kinds of draft for speculative decoding: another model with the same vocabulary (or the model
// itself), and the model's own MTP layer. Each proposes k tokens after what the main model has accepted,
// with the distribution q it drew each one from (one-hot when greedy).
import { fail } from '../errors.js';
import type { BackendName, ModelBackend, MtpHead, Sequence } from '../model/backend.js';
import type { SamplingSettings } from './options.js';
import { Sampler, argmax, drawFrom } from './sampler.js';
import { mulberry32 } from './rng.js';

export interface Proposal {
  tokens: number[];
  /** q[j]: the distribution tokens[j] was drawn from; empty when greedy (q is then one-hot). */
  q: Float32Array[];
}

export interface Draft {
  /**
   * Proposes up to k tokens after `tokens` (the prompt and every accepted token). The main model has run all
   * of them but the last; `hidden` holds its pre-norm hidden states of those it ran since the last call.
   */
  propose(tokens: readonly number[], hidden: Float32Array | null, k: number): Proposal;
  /** Whether propose() needs the main model's hidden states. */
  readonly needsHidden: boolean;
  /** Gives back what the draft holds (its sequence). */
  free(): void;
}

/**
 * Picks draft tokens: argmax when greedy, else a draw from the filtered distribution (temperature, top-k,
 * top-p, min-p) without the penalties: any q keeps speculative sampling exact, one close to p accepts more.
 */
class DraftPicker {
  private readonly sampler: Sampler | null;
  private readonly random: () => number;

  constructor(vocab: number, settings: SamplingSettings) {
    this.sampler = settings.temperature === 0 ? null : new Sampler(vocab, { ...settings, repetitionPenalty: 1, frequencyPenalty: 0, presencePenalty: 0 });
    // Its own stream, so the main sampler's draws are those of plain sampling.
    this.random = mulberry32((settings.seed ^ 0x5bd1e995) >>> 0);
  }

  pick(logits: Float32Array, out: Proposal): number {
    if (!this.sampler) {
      const id = argmax(logits);
      out.tokens.push(id);
      return id;
    }
    const q = this.sampler.probabilities(logits.slice());
    const id = drawFrom(q, this.random());
    out.tokens.push(id);
    out.q.push(q);
    return id;
  }
}

/** A draft model with its own sequence; it keeps what it ran that the main model then accepted. */
export class ModelDraft implements Draft {
  readonly needsHidden = false;
  private readonly sequence: Sequence;
  /** Tokens its sequence holds: a prefix of the accepted tokens, then its last proposal's. */
  private readonly held: number[] = [];
  private readonly picker: DraftPicker;

  constructor(
    private readonly model: ModelBackend,
    vocab: number,
    settings: SamplingSettings,
  ) {
    if (model.config.vocabSize !== vocab) {
      fail(`the draft model's vocabulary has ${model.config.vocabSize} tokens (vocab_size in its config.json), the model's ${vocab}: a draft must share the model's tokenizer`);
    }
    this.sequence = model.createSequence();
    this.picker = new DraftPicker(vocab, settings);
  }

  propose(tokens: readonly number[], _hidden: Float32Array | null, k: number): Proposal {
    return ModelDraft.together([{ draft: this, tokens, k }])[0];
  }

  /** Rolls its sequence back to what it shares with `tokens` and returns the tokens to run first and how many drafts fit. */
  private begin(tokens: readonly number[], k: number): { feed: readonly number[]; k: number } {
    let same = 0;
    // Keep the last token out, so that there is always something to run.
    while (same < this.held.length && same < tokens.length - 1 && this.held[same] === tokens[same]) same++;
    this.model.truncate(this.sequence, same);
    this.held.length = same;
    // The draft's context must also hold the k - 1 drafts it runs.
    return { feed: tokens.slice(same), k: Math.min(k, this.model.contextLength - tokens.length + 1) };
  }

  /**
   * Proposals of several drafts of one draft model (one per generation) at once: each draft position is one
   * forward() of every draft still proposing, so the draft model's weights are read once per position for all.
   */
  static together(requests: readonly { draft: ModelDraft; tokens: readonly number[]; k: number }[]): Proposal[] {
    const model = requests[0]?.draft.model;
    if (requests.some((r) => r.draft.model !== model)) fail('drafts proposed together must share their draft model');
    const runs = requests.map((r) => ({ draft: r.draft, ...r.draft.begin(r.tokens, r.k), out: { tokens: [], q: [] } as Proposal }));
    for (let j = 0; ; j++) {
      const active = runs.filter((r) => j < r.k);
      if (active.length === 0) break;
      const rows = model.forward(active.map((r) => ({ sequence: r.draft.sequence, tokens: r.feed })));
      active.forEach((r, i) => {
        r.draft.held.push(...r.feed);
        r.feed = [r.draft.picker.pick(rows[i], r.out)];
      });
    }
    return runs.map((r) => r.out);
  }

  free(): void {
    this.model.free(this.sequence);
  }
}

/**
 * The model's MTP layer: position i of its cache runs (h_i, t_{i+1}); after the main model's verification it
 * runs the accepted positions with their true hidden states, and chains further drafts on its own output.
 */
export class MtpDraft implements Draft {
  readonly needsHidden = true;
  /** MTP positions run with true hidden states. */
  private position = 0;
  private readonly out: Float32Array;
  private readonly picker: DraftPicker;

  constructor(
    private readonly mtp: MtpHead,
    private readonly sequence: Sequence,
    private readonly dim: number,
    vocab: number,
    settings: SamplingSettings,
  ) {
    this.out = new Float32Array(dim);
    this.picker = new DraftPicker(vocab, settings);
  }

  propose(tokens: readonly number[], hidden: Float32Array | null, k: number): Proposal {
    if (!hidden || hidden.length !== (tokens.length - 1 - this.position) * this.dim) {
      fail(`the MTP draft needs the hidden states of tokens ${this.position} to ${tokens.length - 2}`);
    }
    const out: Proposal = { tokens: [], q: [] };
    let logits = this.mtp.forward(this.sequence, this.position, tokens.slice(this.position + 1), hidden, this.out);
    this.position = tokens.length - 1;
    for (let j = 0; j < k; j++) {
      const id = this.picker.pick(logits, out);
      if (j + 1 < k) logits = this.mtp.forward(this.sequence, this.position + j, [id], this.out, this.out);
    }
    return out;
  }

  free(): void {}
}

/** The backends whose models run an MTP layer (ModelBackend.mtp) when loaded with mtp: true. */
const MTP_BACKENDS: readonly BackendName[] = ['cpu', 'cuda'];

/**
 * Checks that `model` can draft with `draft` ('mtp': its MTP layer must be loaded), before any sequence is taken;
 * errors say what to do.
 */
export function checkDraft(model: ModelBackend, draft: ModelBackend | 'mtp'): void {
  if (draft !== 'mtp' || model.mtp) return;
  if (!MTP_BACKENDS.includes(model.backend)) fail(`draft 'mtp': the ${model.backend} backend does not run the MTP layer; draft with a model (--draft DIR)`);
  fail(`draft 'mtp' needs the model's MTP layer: load the model with mtp: true (--draft mtp loads it${model.config.numNextnPredictLayers === 0 ? "; this model has none, num_nextn_predict_layers is 0" : ''})`);
}

/** The draft of a generation holding `sequence` of `model`: its MTP layer on that sequence, or a new sequence of the draft model. */
export function makeDraft(model: ModelBackend, draft: ModelBackend | 'mtp', sequence: Sequence, settings: SamplingSettings): Draft {
  if (draft === 'mtp') return new MtpDraft(model.mtp!, sequence, model.config.hiddenSize, model.config.vocabSize, settings);
  return new ModelDraft(draft, model.config.vocabSize, settings);
}
