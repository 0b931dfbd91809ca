// How deepwasm writes a checkpoint's weights into files (synth and convert): consecutive tensors in shards
// of about 2 GiB, named as Hugging Face names them.

/** A shard closes before the tensor that would take it past this size (a bigger tensor gets one alone). */
export const SHARD_BYTES = 2 * 1024 ** 3;

/** Consecutive tensors grouped into shards of at most shardBytes (a bigger tensor gets one alone). */
export function planShards<T extends { readonly nbytes: number }>(tensors: readonly T[], shardBytes = SHARD_BYTES): T[][] {
  const shards: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const t of tensors) {
    if (current.length > 0 && bytes + t.nbytes > shardBytes) {
      shards.push(current);
      current = [];
      bytes = 0;
    }
    current.push(t);
    bytes += t.nbytes;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

/** File k of n, as Hugging Face's sharded checkpoints name them. */
export const shardName = (k: number, n: number): string => `model-${String(k + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
