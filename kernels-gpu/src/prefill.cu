// The prefill schedule: T tokens of one sequence per chunk. Every projection is one cuBLAS GEMM; the
// routed experts run as one strided-batched GEMM over all experts with the tokens grouped per expert
// on the device (no host round trip); attention runs the MLA kernels over the latent cache. One decoder
// layer (prefill_layer) is also the MTP layer's block (mtp.cu).
#include "model.cuh"

void gemm(Model &M, const DMat &W, int e0, int batch, const float *X, int ldx, int64_t strideX, float *Y, int ldy,
          int64_t strideY, int tokens, float beta) {
  if (!M.blas) dw_fail("cuBLAS is not loaded");
  const int N = W.rows, K = W.cols;
  if (W.fmt == F_BF16) {
    const int64_t n = strideX * (batch - 1) + (int64_t)tokens * ldx;
    if (n > M.split_cap) dw_fail("internal: split buffer too small");
    launch_split_bf16(M.st, X, M.hi, M.lo, n);
    const __nv_bfloat16 *w = reinterpret_cast<const __nv_bfloat16 *>(W.w + e0 * W.estride);
    const int64_t sw = W.estride / 2;
    blas_gemm_bf16(M.blas, w, W.ld, sw, M.hi, ldx, strideX, Y, ldy, strideY, tokens, N, K, batch, beta);
    blas_gemm_bf16(M.blas, w, W.ld, sw, M.lo, ldx, strideX, Y, ldy, strideY, tokens, N, K, batch, 1.f);
    return;
  }
  const float *w;
  if (W.fmt == F_F32) {
    w = reinterpret_cast<const float *>(W.w + e0 * W.estride);
  } else {
    if ((int64_t)batch * W.rows * W.ld > M.deq_cap) dw_fail("internal: dequant buffer too small");
    launch_dequant(M.st, W, e0, batch, M.deq);
    w = M.deq;
  }
  const int64_t sw = W.fmt == F_F32 ? W.estride / 4 : (int64_t)W.rows * W.ld;
  blas_gemm_f32(M.blas, w, W.ld, sw, X, ldx, strideX, Y, ldy, strideY, tokens, N, K, batch, beta);
}

void prefill_layer(Model &M, const Layer &ly, int T) {
  const dw_config &c = M.c;
  const int H = c.hidden;
  const int qld = c.heads * M.qdim;
  launch_rmsnorm_rows(M.st, M.h, H, M.x, H, ly.v[DW_ROLE_ATTN_NORM], H, T, c.rms_eps);
  if (c.q_lora_rank > 0) {
    const int R = c.q_lora_rank;
    gemm(M, ly.m[DW_ROLE_Q_A], 0, 1, M.h, H, 0, M.qa, R, 0, T, 0.f);
    launch_rmsnorm_rows(M.st, M.qa, R, M.qa, R, ly.v[DW_ROLE_Q_A_NORM], R, T, c.rms_eps);
    gemm(M, ly.m[DW_ROLE_Q_B], 0, 1, M.qa, R, 0, M.q, qld, 0, T, 0.f);
  } else {
    gemm(M, ly.m[DW_ROLE_Q_PROJ], 0, 1, M.h, H, 0, M.q, qld, 0, T, 0.f);
  }
  gemm(M, ly.m[DW_ROLE_KV_A], 0, 1, M.h, H, 0, M.kv, M.latent, 0, T, 0.f);
  launch_mla(M.st, mla_params(M, ly, T, false));
  const int av = c.heads * c.v_dim;
  gemm(M, ly.m[DW_ROLE_O_PROJ], 0, 1, M.attn, av, 0, M.x, H, 0, T, 1.f);

  launch_rmsnorm_rows(M.st, M.h, H, M.x, H, ly.v[DW_ROLE_FFN_NORM], H, T, c.rms_eps);
  if (ly.moe) {
    const int E = c.n_routed, k = c.topk, I = c.moe_inter;
    gemm(M, ly.m[DW_ROLE_ROUTER], 0, 1, M.h, H, 0, M.rlog, E, 0, T, 0.f);
    launch_route(M.st, M.rlog, T, route_args(M, ly), M.chosen, M.rw);
    launch_dispatch(M.st, M.chosen, T * k, E, T, M.counts, M.list, M.slot);
    launch_gather(M.st, M.h, H, M.counts, M.list, k, E, T, M.xd);
    // Every expert over T rows (its tokens first): one batched GEMM, sizes known on the host.
    gemm(M, ly.m[DW_ROLE_EXP_GATE_UP], 0, E, M.xd, H, (int64_t)T * H, M.gud, 2 * I, (int64_t)T * 2 * I, T, 0.f);
    launch_silu_mul(M.st, M.ad, I, M.gud, 2 * I, I, E * T);
    gemm(M, ly.m[DW_ROLE_EXP_DOWN], 0, E, M.ad, I, (int64_t)T * I, M.yd, H, (int64_t)T * H, T, 0.f);
    const float *shared_out = nullptr;
    if (c.n_shared > 0) {
      const int S = I * c.n_shared;
      gemm(M, ly.m[DW_ROLE_SH_GATE_UP], 0, 1, M.h, H, 0, M.gu, 2 * S, 0, T, 0.f);
      launch_silu_mul(M.st, M.act, S, M.gu, 2 * S, S, T);
      gemm(M, ly.m[DW_ROLE_SH_DOWN], 0, 1, M.act, S, 0, M.sout, H, 0, T, 0.f);
      shared_out = M.sout;
    }
    launch_combine(M.st, M.x, shared_out, M.yd, M.chosen, M.rw, M.slot, T, k, H, T);
  } else {
    const int I = c.inter;
    gemm(M, ly.m[DW_ROLE_GATE_UP], 0, 1, M.h, H, 0, M.gu, 2 * I, 0, T, 0.f);
    launch_silu_mul(M.st, M.act, I, M.gu, 2 * I, I, T);
    gemm(M, ly.m[DW_ROLE_DOWN], 0, 1, M.act, I, 0, M.x, H, 0, T, 1.f);
  }
}

void hidden_rows(Model &M, float *out, const float *x, int ld, int n, float *hidden_host) {
  const int H = M.c.hidden;
  launch_rmsnorm_rows(M.st, out, H, x, ld, M.final_norm, H, n, M.c.rms_eps);
  CK(cudaMemcpyAsync(hidden_host, out, sizeof(float) * n * H, cudaMemcpyDeviceToHost, M.st));
}

void prefill_chunk(Model &M, int seq, const int32_t *ids_host, int T, int pos0, bool all_rows, float *logits_host,
                   float *hidden_host) {
  const dw_config &c = M.c;
  const int H = c.hidden;
  CK(cudaMemcpyAsync(M.ids, ids_host, sizeof(int32_t) * T, cudaMemcpyHostToDevice, M.st));
  launch_set_state(M.st, M.state, seq, pos0, 0);
  launch_embed(M.st, M.embed, M.ids, nullptr, M.x, T, H, H);
  for (int l = 0; l < c.layers; l++) prefill_layer(M, M.L[l], T);
  const int rows = all_rows ? T : 1;
  // The final norm of the rows the head reads, or of every row when the hidden states are asked for.
  if (hidden_host) hidden_rows(M, M.h, M.x, H, T, hidden_host);
  else launch_rmsnorm_rows(M.st, M.h, H, M.x + (int64_t)(T - rows) * H, H, M.final_norm, H, rows, c.rms_eps);
  const float *normed = M.h + (int64_t)(hidden_host ? T - rows : 0) * H;
  gemm(M, M.head, 0, 1, normed, H, 0, M.logits, c.vocab, 0, rows, 0.f);
  const float *lastrow = M.logits + (int64_t)(rows - 1) * c.vocab;
  launch_argmax(M.st, lastrow, c.vocab, M.state, 0, M.amax);
  M.last_logits = lastrow;
  if (logits_host) {
    CK(cudaMemcpyAsync(logits_host, M.logits, sizeof(float) * rows * c.vocab, cudaMemcpyDeviceToHost, M.st));
  }
}

