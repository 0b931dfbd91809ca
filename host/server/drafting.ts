// Speculative decoding in the server: the one draft every generation drafts with (the model's MTP layer, whose
// cache goes with the generation's own sequence, or a draft model with a sequence per generation, taken when
// the generation takes its sequence and given back with it), and which requests it is turned off for.
import { fail } from '../errors.js';
import { checkDraft, makeDraft } from '../generate/drafts.js';
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
}
