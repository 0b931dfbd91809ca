/**
 * The one error type users see. Its message already says what was wrong, where (file, tensor or field)
 * and what was expected, so the CLI prints it as it is and shows a stack trace only with --debug.
 */
export class DeepWasmError extends Error {
  override name = 'DeepWasmError';
}

export function fail(message: string): never {
  throw new DeepWasmError(message);
}
