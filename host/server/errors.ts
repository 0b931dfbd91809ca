/**
 * An error a request gets back, shaped as OpenAI shapes it: an HTTP status and {"error": {"message", "type",
 * "param", "code"}}, `param` naming the request field that was wrong so that a client can point at it.
 */
export class ApiError extends Error {
  override name = 'ApiError';
  readonly type: string;

  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    type?: string,
    /** Extra response headers (Retry-After, Allow). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.type = type ?? (status >= 500 ? 'server_error' : 'invalid_request_error');
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** A 400 about one field of the request body. */
export function invalid(param: string | null, message: string, code: string | null = null): ApiError {
  return new ApiError(400, message, param, code);
}

/** The 429 when every sequence is busy and the queue is full, with when to try again. */
export function queueFull(retryAfterSeconds: number): ApiError {
  return new ApiError(429, 'the server is busy: every sequence is in use and the queue is full; retry later', null, 'rate_limit_exceeded', 'rate_limit_error', {
    'Retry-After': String(retryAfterSeconds),
  });
}
