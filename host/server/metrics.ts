// GET /metrics in Prometheus' text format: counters since start, and gauges read at scrape time from the
// scheduler, which owns the sequences, so that a leak shows as slots that never come back.
import type { Scheduler, StepStats } from './scheduler.js';

/** Decode throughput is averaged over this window. */
const RATE_WINDOW_MS = 10_000;

export class Metrics {
  private readonly requests = new Map<string, number>();
  promptTokens = 0;
  completionTokens = 0;
  private steps = 0;
  private stepSeconds = 0;
  /** Recent steps' ends and decode tokens, for tokens/s. */
  private readonly recent: { at: number; tokens: number }[] = [];

  constructor(private readonly scheduler: Scheduler) {}

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
    metric('process_resident_memory_bytes', 'gauge', 'Resident memory of the server process.', [['', process.memoryUsage().rss]]);
    return lines.join('\n') + '\n';
  }
}
