// DeepSeek-V3's multi-token-prediction layer (host/model/mtp.ts says what it computes and why): a chunk
// of MTP positions of one sequence runs as a prefill of one layer, the layer's own decoder block through
// prefill_layer over its own latent cache, between the layer's norms and projections.
#include "model.cuh"

void mtp_chunk(Model &M, int seq, const int32_t *ids_host, int T, int pos0, const float *hidden_in, float *hidden_out,
               float *logits_host) {
  const dw_config &c = M.c;
  const int H = c.hidden;
  const float eps = c.rms_eps;
  const Layer &ly = M.L[c.layers];
  CK(cudaMemcpyAsync(M.ids, ids_host, sizeof(int32_t) * T, cudaMemcpyHostToDevice, M.st));
  CK(cudaMemcpyAsync(M.x, hidden_in, sizeof(float) * T * H, cudaMemcpyHostToDevice, M.st));
  launch_set_state(M.st, M.state, seq, pos0, 0);
  // [enorm(embed(t)); hnorm(h)]: the embedding's half first, as the released weights expect.
  launch_embed(M.st, ly.m[DW_ROLE_MTP_EMBED], M.ids, nullptr, M.h, T, H, H);
  launch_rmsnorm_rows(M.st, M.mtp_in, 2 * H, M.h, H, ly.v[DW_ROLE_MTP_ENORM], H, T, eps);
  launch_rmsnorm_rows(M.st, M.mtp_in + H, 2 * H, M.x, H, ly.v[DW_ROLE_MTP_HNORM], H, T, eps);
  gemm(M, ly.m[DW_ROLE_MTP_EH_PROJ], 0, 1, M.mtp_in, 2 * H, 0, M.x, H, 0, T, 0.f);
  prefill_layer(M, ly, T);
  if (!hidden_out) return;
  // The last position: its output state (a chained draft's input), then its shared head's logits.
  const float *last = M.x + (int64_t)(T - 1) * H;
  CK(cudaMemcpyAsync(hidden_out, last, sizeof(float) * H, cudaMemcpyDeviceToHost, M.st));
  launch_rmsnorm_rows(M.st, M.h, H, last, H, ly.v[DW_ROLE_MTP_HEAD_NORM], H, 1, eps);
  gemm(M, ly.m[DW_ROLE_MTP_HEAD], 0, 1, M.h, H, 0, M.logits, c.vocab, 0, 1, 0.f);
  M.last_logits = M.logits;
  CK(cudaMemcpyAsync(logits_host, M.logits, sizeof(float) * c.vocab, cudaMemcpyDeviceToHost, M.st));
}
