// GET /metrics in Prometheus' text format: counters since start, and gauges read at scrape time from the
// scheduler, which owns the sequences, so that a leak shows as slots that never come back.
import type { ServerDraft } from './drafting.js';
import type { Scheduler, StepStats } from './scheduler.js';

/** Decode throughput is averaged over this window. */
const RATE_WINDOW_MS = 10_000;

export class Metrics {
  private readonly requests = new Map<string, number>();
  promptTokens = 0;
  completionTokens = 0;
  /** Draft tokens the model verified, and those it kept. */
  private draftProposed = 0;
  private draftAccepted = 0;
  private steps = 0;
  private stepSeconds = 0;
  /** Recent steps' ends and decode tokens, for tokens/s. */
  private readonly recent: { at: number; tokens: number }[] = [];

  constructor(
    private readonly scheduler: Scheduler,
    private readonly draft: ServerDraft | null = null,
  ) {}

  /** Counts an answered request by route and status. */
  request(route: string, status: number): void {
    const key = `route="${route}",status="${status}"`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  step(s: StepStats): void {
    this.steps++;
    this.stepSeconds += s.ms / 1000;
    const now = performance.now();
    this.recent.push({ at: now, tokens: s.decodeTokens });
    while (this.recent.length > 0 && this.recent[0].at < now - RATE_WINDOW_MS) this.recent.shift();
  }

  /** Counts a verifying step's drafts; the kept ones are decoded tokens too. */
  drafted(proposed: number, accepted: number): void {
    this.draftProposed += proposed;
    this.draftAccepted += accepted;
    if (accepted > 0) this.recent.push({ at: performance.now(), tokens: accepted });
  }

  /** Decode tokens per second over the last RATE_WINDOW_MS. */
  tokensPerSecond(): number {
    const now = performance.now();
    const tokens = this.recent.reduce((n, r) => (r.at >= now - RATE_WINDOW_MS ? n + r.tokens : n), 0);
    return tokens / (RATE_WINDOW_MS / 1000);
  }

  text(): string {
    const s = this.scheduler;
    const lines: string[] = [];
    const metric = (name: string, type: 'counter' | 'gauge', help: string, values: [string, number][]): void => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of values) lines.push(`${name}${labels ? `{${labels}}` : ''} ${v}`);
    };
    metric('deepwasm_requests_total', 'counter', 'HTTP requests answered, by route and status.', [...this.requests]);
    metric('deepwasm_prompt_tokens_total', 'counter', 'Prompt tokens of the generations started.', [['', this.promptTokens]]);
    metric('deepwasm_completion_tokens_total', 'counter', 'Tokens generated.', [['', this.completionTokens]]);
    metric('deepwasm_tokens_per_second', 'gauge', `Tokens decoded per second over the last ${RATE_WINDOW_MS / 1000} s, all sequences together.`, [['', this.tokensPerSecond()]]);
    metric('deepwasm_steps_total', 'counter', 'Batched forward passes run.', [['', this.steps]]);
    metric('deepwasm_step_seconds_total', 'counter', 'Seconds spent in forward passes.', [['', this.stepSeconds]]);
    metric('deepwasm_queue_depth', 'gauge', 'Requests waiting for a sequence.', [['', s.queued]]);
    metric('deepwasm_active_sequences', 'gauge', 'Generations running (prefilling or decoding).', [['', s.active]]);
    metric('deepwasm_kv_slots_in_use', 'gauge', 'KV-cache slots (sequences) taken from the model.', [['', s.sequencesInUse]]);
    metric('deepwasm_kv_slots_total', 'gauge', 'KV-cache slots the server may use (--parallel).', [['', s.parallel]]);
    metric('deepwasm_kv_tokens_in_use', 'gauge', 'Tokens held in the KV caches of running generations.', [['', s.cachedTokens]]);
    if (this.draft) {
      metric('deepwasm_draft_tokens_proposed_total', 'counter', `Draft tokens (${this.draft.kind === 'mtp' ? 'MTP layer' : 'draft model'}, ${this.draft.tokens} a step) the model verified.`, [['', this.draftProposed]]);
      metric('deepwasm_draft_tokens_accepted_total', 'counter', 'Draft tokens the model kept.', [['', this.draftAccepted]]);
      metric('deepwasm_draft_sequences_in_use', 'gauge', 'Drafts held by running generations (a draft model sequence or MTP cache each).', [['', this.draft.held]]);
    }
    metric('process_resident_memory_bytes', 'gauge', 'Resident memory of the server process.', [['', process.memoryUsage().rss]]);
    return lines.join('\n') + '\n';
  }
}
