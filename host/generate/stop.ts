/**
 * Finds stop strings in streamed text. A stop string can span tokens, so text that could be the start of one is held
 * back until later text shows whether it is; everything before the earliest stop string is released, the stop string
 * and anything after it never are.
 */
export class StopMatcher {
  /** Set once a stop string has been seen; push then returns nothing more. */
  stopped = false;
  private held = '';

  constructor(private readonly stops: readonly string[]) {}

  /** Adds streamed text; returns the text now known to come before any stop string. */
  push(text: string): string {
    if (this.stopped) return '';
    const buffer = this.held + text;
    let at = -1;
    for (const s of this.stops) {
      const i = buffer.indexOf(s);
      if (i >= 0 && (at < 0 || i < at)) at = i;
    }
    if (at >= 0) {
      this.stopped = true;
      this.held = '';
      return buffer.slice(0, at);
    }
    const keep = this.longestPrefixSuffix(buffer);
    this.held = buffer.slice(buffer.length - keep);
    return buffer.slice(0, buffer.length - keep);
  }

  /** Ends the stream with its last text: what is still held back was not a stop string after all, so it comes out. */
  end(text = ''): string {
    const out = this.push(text);
    const rest = this.held;
    this.held = '';
    return out + rest;
  }

  /** Length of the longest end of the text that is the beginning of a stop string. */
  private longestPrefixSuffix(text: string): number {
    let best = 0;
    for (const s of this.stops) {
      for (let len = Math.min(s.length - 1, text.length); len > best; len--) {
        if (text.endsWith(s.slice(0, len))) {
          best = len;
          break;
        }
      }
    }
    return best;
  }
}
