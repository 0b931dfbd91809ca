export interface Progress {
  advance(bytes: number): void;
  done(): void;
}

/** Loads smaller than this finish before a bar would be worth reading. */
const MIN_BYTES = 256 * 1024 * 1024;
const REDRAW_MS = 100;
const MB = 1024 * 1024;

/** The part of a tty stream the bar needs; tests pass a fake one. */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(chunk: string): unknown;
}

const NO_PROGRESS: Progress = { advance() {}, done() {} };

/** A one-line byte progress bar on stderr, drawn only on a terminal and only for large loads. */
export function createProgress(label: string, totalBytes: number, out: ProgressStream = process.stderr): Progress {
  if (!out.isTTY || totalBytes < MIN_BYTES) return NO_PROGRESS;
  const start = performance.now();
  let doneBytes = 0;
  let lastDraw = -Infinity;
  let finished = false;

  const draw = (now: number): void => {
    lastDraw = now;
    const frac = Math.min(1, doneBytes / totalBytes);
    const secs = (now - start) / 1000;
    const rate = secs > 0 ? doneBytes / MB / secs : 0;
    // At the end, how long it took; before, how long is left at the rate so far.
    const time = finished ? `in ${clock(secs)}` : rate > 0 ? `${clock((totalBytes - doneBytes) / MB / rate)} left` : '';
    const stats = ` ${(frac * 100).toFixed(0).padStart(3)}% ${(doneBytes / MB).toFixed(0)}/${(totalBytes / MB).toFixed(0)} MB ${rate.toFixed(0)} MB/s ${time}`;
    const width = Math.max(10, Math.min(40, (out.columns ?? 80) - label.length - stats.length - 4));
    const filled = Math.round(frac * width);
    // \r returns to column 0 and \x1b[K clears what a longer previous line left behind.
    out.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}]${stats}\x1b[K`);
  };

  return {
    advance(bytes) {
      if (finished) return;
      doneBytes += bytes;
      const now = performance.now();
      if (now - lastDraw >= REDRAW_MS) draw(now);
    },
    done() {
      if (finished) return;
      finished = true;
      draw(performance.now());
      out.write('\n');
    },
  };
}

/** Seconds as "42 s" or "3 min 05 s". */
function clock(secs: number): string {
  const s = Math.round(secs);
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
}

/** Progress as the loaders report it (bytes read so far, total): draws the bar on first report. */
export interface LoadProgress {
  onProgress(read: number, total: number): void;
  done(): void;
}

export function loadProgress(label: string): LoadProgress {
  let bar: Progress | undefined;
  let seen = 0;
  return {
    onProgress(read, total) {
      bar ??= createProgress(label, total);
      bar.advance(read - seen);
      seen = read;
    },
    done() {
      bar?.done();
    },
  };
}
