// Speculative decoding in the server: the one draft every generation drafts with (the model's MTP layer, whose
// cache goes with the generation's own sequence, or a draft model with a sequence per generation, taken when
// the generation takes its sequence and given back with it), and which requests it is turned off for. A draft
// model proposes for every speculating generation of a step at once (one forward() per draft position); the
// MTP layer runs per sequence, as the backend interface has it.
import { fail } from '../errors.js';
import { ModelDraft, checkDraft, makeDraft, type Proposal } from '../generate/drafts.js';
import { resolveDraft, type SamplingSettings } from '../generate/options.js';
import { Speculation } from '../generate/speculative.js';
import { TextModel, checkSameVocabulary } from '../generate/text-model.js';
import type { ModelBackend, Sequence } from '../model/backend.js';

/** What --draft names: the MTP layer, or a loaded draft model. */
export type ServerDraftChoice = 'mtp' | TextModel;

export class ServerDraft {
  /** Draft tokens per step. */
  readonly tokens: number;
  readonly kind: 'mtp' | 'model';
  /** Speculations alive: each holds, with a draft model, one of its sequences. */
  held = 0;
  private readonly draft: ModelBackend | 'mtp';
  /** This step's draft requests, and what propose() made of them. */
  private readonly planned: { spec: Speculation; k: number }[] = [];
  private readonly ready = new Map<Speculation, Proposal | Error>();

  constructor(
    private readonly model: TextModel,
    choice: ServerDraftChoice,
    draftTokens: number | undefined,
    parallel: number,
  ) {
    const resolved = resolveDraft({ draft: choice, draftTokens })!;
    this.draft = resolved.model;
    this.tokens = resolved.tokens;
    this.kind = this.draft === 'mtp' ? 'mtp' : 'model';
    checkDraft(model.model, this.draft);
    if (choice instanceof TextModel) {
      checkSameVocabulary(model.tokenizer, choice.tokenizer);
      if (choice.model.maxSequences < parallel) {
        fail(`the draft model holds ${choice.model.maxSequences} sequences but the server runs ${parallel} (--parallel): load it with maxSequences ${parallel}`);
      }
    }
  }

  /**
   * Whether a request drafts. Not under a JSON grammar when sampling: the grammar's second draw (when the
   * first token cannot end in time) is not one distribution the speculative-sampling rule could verify
   * against; greedy runs the same pick on every drafted row, so it drafts.
   */
  applies(settings: SamplingSettings, grammar: boolean): boolean {
    return !(grammar && settings.temperature > 0);
  }

  /** The speculation of a generation that now holds `sequence`; give it back with release(). */
  start(sequence: Sequence, settings: SamplingSettings): Speculation {
    const spec = new Speculation(this.model.model, makeDraft(this.model.model, this.draft, sequence, settings), this.tokens, settings);
    this.held++;
    return spec;
  }

  release(spec: Speculation): void {
    this.held--;
    spec.free();
  }

  /** Asks for `spec`'s drafts of the coming step, proposed with the others' by propose(); a no-op for the MTP layer. */
  plan(spec: Speculation, sequence: Sequence, budget: number): void {
    if (this.kind !== 'model') return;
    const k = spec.draftCount(sequence, budget);
    if (k > 0) this.planned.push({ spec, k });
  }

  /** Proposes every planned draft at once; a failure is each planned generation's, thrown by its proposal(). */
  propose(): void {
    this.ready.clear();
    const planned = this.planned.splice(0);
    if (planned.length === 0) return;
    try {
      const out = ModelDraft.together(planned.map(({ spec, k }) => ({ draft: spec.draft as ModelDraft, tokens: spec.history, k })));
      planned.forEach(({ spec }, i) => this.ready.set(spec, out[i]));
    } catch (e) {
      for (const { spec } of planned) this.ready.set(spec, e instanceof Error ? e : new Error(String(e)));
    }
  }

  /** What propose() made for `spec` this step (undefined: it drafts alone, the MTP layer, or drafts nothing). */
  proposal(spec: Speculation): Proposal | undefined {
    const p = this.ready.get(spec);
    this.ready.delete(spec);
    if (p instanceof Error) throw p;
    return p;
  }
}
