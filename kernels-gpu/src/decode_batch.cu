// The batched decode schedule: n sequences, each at its own position, one token each, in one pass
// over the weights (batch.cu's kernels), captured as a CUDA graph per n and replayed. The tokens,
// sequences and positions live in M.bstate, which the host fills before each replay, so one graph
// serves every batch of n. Per layer: q|kv_a (and q_b) over the n tokens, the absorbed attention of
// each token over its own sequence's cache (mla.cu with per-token sequences and positions), o_proj,
// then the MoE: norm, router, routing and grouping into the step's distinct experts, gate/up of
// each distinct expert for the tokens that chose it (and the shared experts for all), down; at the
// end the lm_head and one argmax per token. Every token's values equal the single-token step's to
// the bit up to the down projection, whose sums run over the step's experts in another order.
#include <algorithm>
#include <cstddef>
#include "model.cuh"

namespace {

// Shared memory the batched kernels stage n tokens' inputs in, at most.
constexpr int64_t STAGE_SMEM = 200 << 10;

const int *bstate_field(const Model &M, size_t offset) {
  return reinterpret_cast<const int *>(reinterpret_cast<const char *>(M.bstate) + offset);
}

// Floats between two tokens' rows of the batched buffers.
struct Strides {
  int x, q, qa, kv, attn, act;
};
Strides strides(const Model &M) {
  const dw_config &c = M.c;
  const int maxI = std::max({c.inter, c.moe_inter * c.n_shared, c.moe_inter, 1});
  return Strides{round_up(c.hidden, 8),
                 round_up(c.heads * M.qdim, 8),
                 round_up(std::max(c.q_lora_rank, 1), 8),
                 round_up(M.latent, 8),
                 c.heads * c.v_dim,  // as the W_UV kernel writes them
                 std::max(c.topk, 1) * round_up(c.moe_inter, 8) + round_up(maxI, 8)};
}

MoeParams batch_moe_params(const Model &M, const Layer &ly, int n, const Strides &s) {
  MoeParams p = moe_params(M, ly);
  p.n = n;
  p.x = M.bh;
  p.norm = nullptr;
  p.xld = s.x;
  p.xout = M.bx;
  p.act = M.bact;
  p.act_ld = s.act;
  if (ly.moe) {
    p.units = M.units;
    p.max_units = std::min(M.c.n_routed, n * M.c.topk);
  }
  return p;
}

}  // namespace

int batch_max(const Model &M) {
  const dw_config &c = M.c;
  const int64_t widest = round_up(std::max({c.hidden, c.q_lora_rank, c.heads * c.v_dim}), 8) * 4;
  const int64_t route = (int64_t)(2 * c.n_routed + c.n_group + 8) * 4;
  int64_t b = std::min<int64_t>(BATCH_MAX, STAGE_SMEM / widest);
  if (c.n_routed > 0) b = std::min<int64_t>({b, UNITS_MAX / c.topk, STAGE_SMEM / route});
  return (int)std::max<int64_t>(1, b);  // not capped by the pool: one sequence may run several tokens a step
}

void decode_batch_step(Model &M, int n) {
  const dw_config &c = M.c;
  const Strides s = strides(M);
  PdlScope scope;
  mark(M, "embed", 0);
  launch_embed(M.st, M.embed, bstate_field(M, offsetof(BState, token)), nullptr, M.bx, n, c.hidden, s.x);
  launch_flags().pdl = M.pdl && !M.prof && !M.c.batch_no_pdl;
  for (int l = 0; l < c.layers; l++) {
    const Layer &ly = M.L[l];
    mark(M, "q/kv_a gemv", bytes_of(ly.m[DW_ROLE_Q_PROJ]) + bytes_of(ly.m[DW_ROLE_Q_A]) + bytes_of(ly.m[DW_ROLE_Q_B]) +
                               bytes_of(ly.m[DW_ROLE_KV_A]));
    if (c.q_lora_rank > 0) {
      gemv_multi(M, M.bx, ly.v[DW_ROLE_ATTN_NORM], c.hidden,
                 {{&ly.m[DW_ROLE_Q_A], M.bqa, false, s.qa}, {&ly.m[DW_ROLE_KV_A], M.bkv, false, s.kv}}, n, s.x);
      gemv_multi(M, M.bqa, ly.v[DW_ROLE_Q_A_NORM], c.q_lora_rank, {{&ly.m[DW_ROLE_Q_B], M.bq, false, s.q}}, n, s.qa);
    } else {
      gemv_multi(M, M.bx, ly.v[DW_ROLE_ATTN_NORM], c.hidden,
                 {{&ly.m[DW_ROLE_Q_PROJ], M.bq, false, s.q}, {&ly.m[DW_ROLE_KV_A], M.bkv, false, s.kv}}, n, s.x);
    }
    mark(M, "mla (absorb, attend, W_UV)", bytes_of(ly.m[DW_ROLE_KV_B]));
    MlaParams mp = mla_params(M, ly, n, true);
    mp.q = M.bq;
    mp.q_ld = s.q;
    mp.kv = M.bkv;
    mp.kv_ld = s.kv;
    mp.qabs = M.bqabs;
    mp.part = M.bpart;
    mp.out = M.battn;
    mp.tseq = bstate_field(M, offsetof(BState, seq));
    mp.tpos = bstate_field(M, offsetof(BState, pos));
    launch_mla(M.st, mp);
    mark(M, "o_proj gemv", bytes_of(ly.m[DW_ROLE_O_PROJ]));
    gemv_multi(M, M.battn, nullptr, c.heads * c.v_dim, {{&ly.m[DW_ROLE_O_PROJ], M.bx, true, s.x}}, n, s.attn);
    mark(M, "ffn norm", 0);
    launch_norm_batch(M.st, M.bh, M.bx, s.x, ly.v[DW_ROLE_FFN_NORM], c.rms_eps, c.hidden, n);
    MoeParams p = batch_moe_params(M, ly, n, s);
    const int fmt = ly.m[ly.moe ? DW_ROLE_EXP_GATE_UP : DW_ROLE_GATE_UP].fmt;
    if (ly.moe) {
      mark(M, "router + routing", bytes_of(ly.m[DW_ROLE_ROUTER]));
      gemv_multi(M, M.bh, nullptr, c.hidden, {{&ly.m[DW_ROLE_ROUTER], M.brlog, false, c.n_routed}}, n, s.x);
      launch_route_batch(M.st, M.brlog, n, route_args(M, ly), round_up(c.moe_inter, 8), M.bchosen, M.bw, M.units,
                         M.bstate);
    }
    // The routed experts' bytes depend on the step's routing: the table counts only the fixed MLP's.
    mark(M, "gate/up (distinct + fixed)", bytes_of(ly.m[ly.moe ? DW_ROLE_SH_GATE_UP : DW_ROLE_GATE_UP]));
    launch_moe_gateup_batch(M.st, fmt, p);
    mark(M, "down (distinct + fixed)", bytes_of(ly.m[ly.moe ? DW_ROLE_SH_DOWN : DW_ROLE_DOWN]));
    launch_moe_down_batch(M.st, fmt, p);
  }
  mark(M, "lm_head gemv", bytes_of(M.head));
  gemv_multi(M, M.bx, M.final_norm, c.hidden, {{&M.head, M.blogits, false, c.vocab}}, n, s.x);
  mark(M, "argmax", 0);
  launch_argmax_rows(M.st, M.blogits, c.vocab, n, c.vocab,
                     const_cast<int *>(bstate_field(M, offsetof(BState, next))));
  mark(M, "end", 0);
}

void batch_hidden(Model &M, int n, float *hidden_host) {
  hidden_rows(M, M.bh, M.bx, strides(M).x, n, hidden_host);
}
