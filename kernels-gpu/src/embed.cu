// The token embedding: a row of the embedding matrix (any format) per token, as f32.
#include "ops.cuh"

namespace {

__global__ void embed_kernel(WRef w, int fmt, const int *ids, const DState *state, float *x, int hidden, int ld) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  const int id = ids ? ids[t] : state->token;
  const char *rowp = w.w + (int64_t)id * w.ldb;
  const float *srow = w.s ? w.s + (int64_t)id * w.sld : nullptr;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) x[(int64_t)t * ld + i] = load1(fmt, rowp, srow, i, w.sblk);
}

}  // namespace

void launch_embed(cudaStream_t st, const DMat &emb, const int *ids, const DState *state, float *x, int tokens, int hidden,
                  int ld) {
  launch_k(embed_kernel, tokens, 256, 0, st, wref(emb), emb.fmt, ids, state, x, hidden, ld);
  LAUNCHED("embed", st);
}

