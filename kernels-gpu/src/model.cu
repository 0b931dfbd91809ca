// The model's lifetime: made from dw_config, the shapes its roles must have, the memory plan (decided
// once, before any weight is read), the buffers and the KV-cache pool allocated at finalize.
#include <algorithm>
#include <type_traits>
#include "model.cuh"

bool is_moe(const dw_config &c, int l) {
  return c.n_routed > 0 && l >= c.first_dense && l % std::max(1, c.moe_freq) == 0;
}

Model *new_model(const dw_config &c) {
  auto need = [](bool b, const char *what) {
    if (!b) dw_fail(std::string("bad config: ") + what);
  };
  need(c.vocab > 0 && c.hidden > 0 && c.layers > 0 && c.heads > 0, "vocab, hidden, layers and heads must be positive");
  need(c.kv_lora_rank > 0 && c.nope >= 0 && c.rope > 0 && c.rope % 2 == 0 && c.v_dim > 0, "attention dimensions");
  need(c.kv_lora_rank + c.rope <= 640, "kv_lora_rank + qk_rope_head_dim must be at most 640");
  need(c.max_context > 0, "max_context must be positive");
  need(c.max_sequences > 0, "max_sequences must be positive");
  need(c.n_routed == 0 || (c.topk > 0 && c.topk <= 32 && c.topk <= c.n_routed && c.n_routed <= 4096),
       "num_experts_per_tok must be 1..32 and at most n_routed_experts");
  need(c.n_routed == 0 || (c.n_group > 0 && c.n_routed % c.n_group == 0), "n_routed_experts divisible by n_group");
  need(c.attn_splits >= 0 && c.attn_splits <= 32, "attn_splits must be 0 (automatic) to 32");
  need(c.nextn == 0 || c.nextn == 1, "nextn (the MTP layer) must be 0 or 1");
  Model *M = new Model();
  try {
    M->c = c;
    if (M->c.max_prefill <= 0) M->c.max_prefill = 256;
    if (M->c.moe_freq <= 0) M->c.moe_freq = 1;
    M->qdim = c.nope + c.rope;
    M->latent = c.kv_lora_rank + c.rope;
    M->P = std::min(M->c.max_prefill, c.max_context);
    int dev = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&M->nsm, cudaDevAttrMultiProcessorCount, dev));
    CK(cudaStreamCreateWithFlags(&M->st, cudaStreamNonBlocking));
    M->L.resize(c.layers + c.nextn);
    for (size_t l = 0; l < M->L.size(); l++) M->L[l].moe = is_moe(c, (int)l);
    M->nsplit = c.attn_splits > 0 ? c.attn_splits : std::max(1, std::min(32, 2 * M->nsm / c.heads));
    M->pdl = c.pdl != 0;
    M->batch_max = batch_max(*M);
  } catch (...) {
    free_model(M);
    throw;
  }
  return M;
}

void free_model(Model *M) {
  if (M->st) cudaStreamSynchronize(M->st);
  if (M->graph) cudaGraphExecDestroy(M->graph);
  for (cudaGraphExec_t g : M->bgraph)
    if (g) cudaGraphExecDestroy(g);
  if (M->host_bstate) cudaFreeHost(M->host_bstate);
  if (M->host_blogits) cudaFreeHost(M->host_blogits);
  blas_close(M->blas);
  for (void *p : M->allocs) cudaFree(p);
  if (M->stage) cudaFree(M->stage);
  if (M->host_logits) cudaFreeHost(M->host_logits);
  if (M->st) cudaStreamDestroy(M->st);
  delete M;
}

Shape layer_shape(const Model &M, int l, int role) {
  const dw_config &c = M.c;
  const bool moe = is_moe(c, l);
  const bool mtp = l == c.layers;  // the MTP layer: a decoder block and the layer's own roles
  const int64_t qrows = (int64_t)c.heads * M.qdim;
  const int64_t sh = (int64_t)c.moe_inter * c.n_shared;
  Shape s;
  auto mat = [&](int64_t r, int64_t cl, bool req, int e = 1) {
    s.rows = r;
    s.cols = cl;
    s.required = req;
    s.experts = e;
  };
  auto vec = [&](int64_t n, bool req) {
    s.rows = n;
    s.cols = 1;
    s.vec = true;
    s.required = req;
  };
  switch (role) {
    case DW_ROLE_ATTN_NORM: vec(c.hidden, true); break;
    case DW_ROLE_Q_PROJ: if (c.q_lora_rank == 0) mat(qrows, c.hidden, true); break;
    case DW_ROLE_Q_A: if (c.q_lora_rank > 0) mat(c.q_lora_rank, c.hidden, true); break;
    case DW_ROLE_Q_A_NORM: if (c.q_lora_rank > 0) vec(c.q_lora_rank, true); break;
    case DW_ROLE_Q_B: if (c.q_lora_rank > 0) mat(qrows, c.q_lora_rank, true); break;
    case DW_ROLE_KV_A: mat(c.kv_lora_rank + c.rope, c.hidden, true); break;
    case DW_ROLE_KV_A_NORM: vec(c.kv_lora_rank, true); break;
    case DW_ROLE_KV_B: mat((int64_t)c.heads * (c.nope + c.v_dim), c.kv_lora_rank, true); break;
    case DW_ROLE_O_PROJ: mat(c.hidden, (int64_t)c.heads * c.v_dim, true); break;
    case DW_ROLE_FFN_NORM: vec(c.hidden, true); break;
    case DW_ROLE_GATE_UP: if (!moe) mat(2LL * c.inter, c.hidden, true); break;
    case DW_ROLE_DOWN: if (!moe) mat(c.hidden, c.inter, true); break;
    case DW_ROLE_ROUTER: if (moe) mat(c.n_routed, c.hidden, true); break;
    case DW_ROLE_ROUTER_BIAS: if (moe) vec(c.n_routed, false); break;
    case DW_ROLE_EXP_GATE_UP: if (moe) mat(2LL * c.moe_inter, c.hidden, true, c.n_routed); break;
    case DW_ROLE_EXP_DOWN: if (moe) mat(c.hidden, c.moe_inter, true, c.n_routed); break;
    case DW_ROLE_SH_GATE_UP: if (moe && c.n_shared > 0) mat(2 * sh, c.hidden, true); break;
    case DW_ROLE_SH_DOWN: if (moe && c.n_shared > 0) mat(c.hidden, sh, true); break;
    case DW_ROLE_MTP_ENORM:
    case DW_ROLE_MTP_HNORM:
    case DW_ROLE_MTP_HEAD_NORM: if (mtp) vec(c.hidden, true); break;
    case DW_ROLE_MTP_EH_PROJ: if (mtp) mat(c.hidden, 2LL * c.hidden, true); break;
    case DW_ROLE_MTP_HEAD:
    case DW_ROLE_MTP_EMBED: if (mtp) mat(c.vocab, c.hidden, true); break;
  }
  return s;
}

Shape global_shape(const Model &M, int role) {
  const dw_config &c = M.c;
  Shape s;
  s.required = true;
  switch (role) {
    case DW_ROLE_EMBED:
    case DW_ROLE_LM_HEAD: s.rows = c.vocab; s.cols = c.hidden; break;
    case DW_ROLE_FINAL_NORM: s.rows = c.hidden; s.cols = 1; s.vec = true; break;
    case DW_ROLE_ROPE_COS:
    case DW_ROLE_ROPE_SIN: s.rows = (int64_t)c.max_context * (c.rope / 2); s.cols = 1; s.vec = true; break;
    default: s.required = false;
  }
  return s;
}

std::string role_name(int layer, int role) {
  return "role " + std::to_string(role) + (layer >= 0 ? " (layer " + std::to_string(layer) + ")" : " (global)");
}

Shape shape_of(const Model &M, int layer, int role) {
  if (layer < 0) return global_shape(M, role);
  if (layer >= (int)M.L.size())
    dw_fail("layer " + std::to_string(layer) + " out of range (" + std::to_string(M.c.layers) + " layers" +
            (M.c.nextn ? ", then the MTP layer)" : "; the model was made without its MTP layer, dw_config.nextn 0)"));
  if (role < 0 || role >= LAYER_SLOTS) return Shape{};
  return layer_shape(M, layer, role);
}

DMat *matrix_of(Model &M, int layer, int role) {
  const Shape s = shape_of(M, layer, role);
  if (s.rows == 0) dw_fail(role_name(layer, role) + " is not part of this model's configuration");
  if (s.vec) return nullptr;
  if (layer < 0) return role == DW_ROLE_EMBED ? &M.embed : &M.head;
  return &M.L[layer].m[role];
}

float **vector_of(Model &M, int layer, int role) {
  const Shape s = shape_of(M, layer, role);
  if (s.rows == 0) dw_fail(role_name(layer, role) + " is not part of this model's configuration");
  if (!s.vec) return nullptr;
  if (layer >= 0) return &M.L[layer].v[role];
  return role == DW_ROLE_FINAL_NORM ? &M.final_norm : role == DW_ROLE_ROPE_COS ? &M.rope_cos : &M.rope_sin;
}

// Columns per scale of a scaled format: q8's group, or the FP8 checkpoint's block columns.
static int scale_block(int fmt, int fp8_block_cols) { return fmt == F_Q8 ? DW_QUANT_GROUP : fp8_block_cols; }

int64_t matrix_bytes(int fmt, int64_t rows, int64_t cols, int experts) {
  const int64_t ld = round_up((int)cols, ROW_ALIGN);
  int64_t b = rows * ld * fmt_size(fmt);
  if (fmt_scaled(fmt)) b += rows * ceil_div((int)cols, scale_block(fmt, DW_FP8_BLOCK)) * 4;
  return b * experts + (fmt_scaled(fmt) ? 16 : 0);
}

void alloc_matrix(Model &M, DMat &m, const Shape &s, int fp8_block_cols) {
  m.rows = (int)s.rows;
  m.cols = (int)s.cols;
  m.ld = round_up(m.cols, ROW_ALIGN);
  m.experts = s.experts;
  m.estride = (int64_t)m.rows * m.ldb();
  m.w = M.alloc<char>(m.estride * m.experts);
  if (fmt_scaled(m.fmt)) {
    m.sblk = scale_block(m.fmt, fp8_block_cols);
    m.sld = ceil_div(m.cols, m.sblk);
    m.sestride = (int64_t)m.rows * m.sld;
    m.s = M.alloc<float>(m.sestride * m.experts + 4);  // + 4: 16-byte rounding of L2 prefetches
  }
}

int64_t bytes_of(const DMat &W, int experts) {
  if (!W.ok()) return 0;
  const int n = experts < 0 ? W.experts : experts;
  return (W.estride + (W.s ? W.sestride * 4 : 0)) * n;
}

// Every role of the model that holds data: fn(layer, role, shape, matrix or null for vectors).
template <typename Fn>
static void each_role(const Model &M, Fn &&fn) {
  for (int l = 0; l < (int)M.L.size(); l++)
    for (int r = 0; r < LAYER_SLOTS; r++) {
      const Shape s = layer_shape(M, l, r);
      if (s.rows > 0) fn(l, r, s, s.vec ? nullptr : &M.L[l].m[r]);
    }
  for (int r : {DW_ROLE_EMBED, DW_ROLE_FINAL_NORM, DW_ROLE_LM_HEAD, DW_ROLE_ROPE_COS, DW_ROLE_ROPE_SIN}) {
    const Shape s = global_shape(M, r);
    fn(-1, r, s, s.vec ? nullptr : r == DW_ROLE_EMBED ? &M.embed : &M.head);
  }
}

int64_t planned_weight_bytes(const Model &M) {
  int64_t b = 0;
  each_role(M, [&](int l, int r, const Shape &s, const DMat *W) {
    if (!W) {
      b += s.rows * 4;
      return;
    }
    if (W->fmt < 0) dw_fail(role_name(l, r) + " has no declared format (dw_declare)");
    b += matrix_bytes(W->fmt, s.rows, s.cols, s.experts);
  });
  return b;
}

int64_t kv_cache_bytes(const Model &M) {
  return (int64_t)M.L.size() * M.c.max_sequences * M.c.max_context * M.latent * 4;
}

// The prefill's f32 copy of the widest matrix that cuBLAS cannot read as it is (q8, fp8).
static int64_t widened_floats(const Model &M) {
  int64_t deq = 0;
  each_role(M, [&](int, int, const Shape &s, const DMat *W) {
    if (W && W->fmt != F_F32 && W->fmt != F_BF16) deq = std::max<int64_t>(deq, s.experts * s.rows * round_up((int)s.cols, ROW_ALIGN));
  });
  return deq;
}

// The buffers of both schedules, in one place for the plan (sizes) and finalize (allocation):
// a(pointer, count) for each.
template <typename A>
static void each_buffer(Model &M, A &&a) {
  const dw_config &c = M.c;
  const int P = M.P, H = c.hidden, E = std::max(c.n_routed, 1), k = std::max(c.topk, 1);
  const int I = c.moe_inter, S = c.moe_inter * c.n_shared;
  const int maxI = std::max({c.inter, S, I, 1});
  a(M.x, (int64_t)P * H);
  a(M.h, (int64_t)P * H);
  a(M.q, (int64_t)P * c.heads * M.qdim);
  a(M.qa, (int64_t)P * std::max(c.q_lora_rank, 1));
  a(M.kv, (int64_t)P * M.latent);
  a(M.qabs, (int64_t)P * c.heads * M.latent);
  a(M.part, (int64_t)P * c.heads * (c.kv_lora_rank + 2));
  a(M.attn, (int64_t)P * c.heads * c.v_dim);
  a(M.gu, (int64_t)P * 2 * maxI);
  a(M.act, (int64_t)P * maxI);
  a(M.sout, (int64_t)P * H);
  a(M.logits, (int64_t)P * c.vocab);
  if (c.nextn > 0) a(M.mtp_in, (int64_t)P * 2 * H);
  a(M.ids, P);
  if (c.n_routed > 0) {
    a(M.rlog, (int64_t)P * E);
    a(M.rw, (int64_t)P * k);
    a(M.chosen, (int64_t)P * k);
    a(M.slot, (int64_t)P * k);
    a(M.counts, E);
    a(M.list, (int64_t)E * P);
    a(M.xd, (int64_t)E * P * H);
    a(M.gud, (int64_t)E * P * 2 * I);
    a(M.ad, (int64_t)E * P * I);
    a(M.yd, (int64_t)E * P * H);
  }
  const int64_t maxK = std::max({H, c.q_lora_rank, c.heads * c.v_dim, c.inter, S, c.nextn * 2 * H, 1});
  M.split_cap = std::max<int64_t>((int64_t)P * maxK, c.n_routed > 0 ? (int64_t)E * P * std::max(H, I) : 0);
  a(M.hi, M.split_cap);
  a(M.lo, M.split_cap);
  M.deq_cap = widened_floats(M);
  if (M.deq_cap > 0) a(M.deq, M.deq_cap);
  a(M.dx, round_up(H, 8));
  a(M.dh, round_up(H, 8));
  a(M.dq, round_up(c.heads * M.qdim, 8));
  a(M.dqa, round_up(std::max(c.q_lora_rank, 1), 8));
  a(M.dkv, round_up(M.latent, 8));
  a(M.dqabs, (int64_t)c.heads * M.latent);
  a(M.dpart, (int64_t)c.heads * M.nsplit * (c.kv_lora_rank + 2));
  a(M.dattn, round_up(c.heads * c.v_dim, 8));
  a(M.dact, (int64_t)k * round_up(I, 8) + round_up(maxI, 8));
  a(M.drlog, E);
  a(M.dw, k);
  a(M.dchosen, k);
  a(M.dlogits, c.vocab);
  a(M.topk_scratch, c.vocab);
  a(M.tk_vals, 256);
  a(M.tk_ids, 256);
  a(M.counter, 1);
  a(M.amax.v, 256);
  a(M.amax.i, 256);
  a(M.amax.counter, 1);
  a(M.log, c.max_context + 1);
  a(M.state, 1);
  const int B = M.batch_max, H8 = round_up(H, 8);
  a(M.bx, (int64_t)B * H8);
  a(M.bh, (int64_t)B * H8);
  a(M.bq, (int64_t)B * round_up(c.heads * M.qdim, 8));
  a(M.bqa, (int64_t)B * round_up(std::max(c.q_lora_rank, 1), 8));
  a(M.bkv, (int64_t)B * round_up(M.latent, 8));
  a(M.bqabs, (int64_t)B * c.heads * M.latent);
  a(M.bpart, (int64_t)B * c.heads * M.nsplit * (c.kv_lora_rank + 2));
  a(M.battn, (int64_t)B * c.heads * c.v_dim + 8);
  a(M.bact, (int64_t)B * (k * round_up(I, 8) + round_up(maxI, 8)));
  a(M.brlog, (int64_t)B * E);
  a(M.bw, (int64_t)B * k);
  a(M.bchosen, (int64_t)B * k);
  a(M.blogits, (int64_t)B * c.vocab);
  a(M.units, 1);
  a(M.bstate, 1);
}

// cuBLAS's workspace, the decode graph and the runtime's own allocations.
constexpr int64_t HEADROOM_BYTES = 256ll << 20;

int64_t scratch_bytes(Model &M) {
  int64_t b = 0;
  each_buffer(M, [&](auto *&p, int64_t n) { b += (std::max<int64_t>(n, 1) * (int64_t)sizeof(*p) + 511) / 512 * 512; });
  return std::max<int64_t>(b, (int64_t)STAGE_BYTES) + HEADROOM_BYTES;
}

void finalize_model(Model &M) {
  const dw_config &c = M.c;
  each_role(M, [&](int l, int r, const Shape &s, const DMat *W) {
    const std::string name = role_name(l, r);
    if (!s.required) return;
    if (!W) {
      const float *v = l >= 0 ? M.L[l].v[r] : r == DW_ROLE_FINAL_NORM ? M.final_norm : r == DW_ROLE_ROPE_COS ? M.rope_cos : M.rope_sin;
      if (!v) dw_fail(name + " was never loaded");
      return;
    }
    if (!W->ok()) dw_fail(name + " was never loaded");
    if (W->loaded != s.rows * s.experts)
      dw_fail(name + ": " + std::to_string(W->loaded) + " of " + std::to_string(s.rows * s.experts) + " rows loaded");
  });
  for (int l = 0; l < (int)M.L.size(); l++) {
    const Layer &ly = M.L[l];
    auto same = [&](int a, int b) {
      if (ly.m[a].ok() && ly.m[b].ok() && ly.m[a].fmt != ly.m[b].fmt)
        dw_fail(role_name(l, a) + " is " + fmt_name(ly.m[a].fmt) + " but " + role_name(l, b) + " is " +
                fmt_name(ly.m[b].fmt) + "; declare an MLP's matrices in one format");
    };
    if (ly.moe) {
      same(DW_ROLE_EXP_GATE_UP, DW_ROLE_EXP_DOWN);
      same(DW_ROLE_EXP_GATE_UP, DW_ROLE_SH_GATE_UP);
      same(DW_ROLE_EXP_GATE_UP, DW_ROLE_SH_DOWN);
    } else {
      same(DW_ROLE_GATE_UP, DW_ROLE_DOWN);
    }
  }
  if (M.stage) {
    CK(cudaStreamSynchronize(M.st));
    CK(cudaFree(M.stage));
    M.stage = nullptr;
    M.stage_cap = 0;
  }
  float *pool = M.alloc<float>(kv_cache_bytes(M) / 4);
  const int64_t per_layer = (int64_t)c.max_sequences * c.max_context * M.latent;
  for (size_t l = 0; l < M.L.size(); l++) M.L[l].cache = pool + l * per_layer;
  each_buffer(M, [&](auto *&p, int64_t n) { p = M.alloc<std::remove_reference_t<decltype(*p)>>(n); });
  DState s0{0, 0, 0, 0, c.max_context + 1, M.log};
  CK(cudaMemcpyAsync(M.state, &s0, sizeof s0, cudaMemcpyHostToDevice, M.st));
  CK(cudaStreamSynchronize(M.st));
  CK(cudaMallocHost(&M.host_logits, sizeof(float) * c.vocab));
  CK(cudaMallocHost(&M.host_bstate, sizeof(BState)));
  CK(cudaMallocHost(&M.host_blogits, sizeof(float) * M.batch_max * c.vocab));
  M.blas = blas_open(M.st);
  M.finalized = true;
}

void *staging(Model &M, size_t bytes) {
  if (bytes > M.stage_cap) {
    CK(cudaStreamSynchronize(M.st));
    if (M.stage) CK(cudaFree(M.stage));
    M.stage = nullptr;
    M.stage_cap = 0;
    CK(cudaMalloc(&M.stage, bytes));
    M.stage_cap = bytes;
  }
  return M.stage;
}

RouteArgs route_args(const Model &M, const Layer &ly) {
  const dw_config &c = M.c;
  RouteArgs ra{};
  ra.E = c.n_routed;
  ra.k = c.topk;
  ra.groups = c.n_group;
  ra.keep = c.topk_group;
  ra.method = c.topk_method;
  ra.scoring = c.scoring;
  ra.normalize = c.norm_topk;
  ra.scale = c.routed_scale;
  ra.bias = ly.v[DW_ROLE_ROUTER_BIAS];
  return ra;
}

MlaParams mla_params(const Model &M, const Layer &ly, int tokens, bool decode) {
  const dw_config &c = M.c;
  MlaParams p{};
  p.q = decode ? M.dq : M.q;
  p.q_ld = c.heads * M.qdim;
  p.kv = decode ? M.dkv : M.kv;
  p.kv_ld = M.latent;
  p.kvb = wref(ly.m[DW_ROLE_KV_B]);
  p.kvb_fmt = ly.m[DW_ROLE_KV_B].fmt;
  p.kv_norm = ly.v[DW_ROLE_KV_A_NORM];
  p.cos = M.rope_cos;
  p.sin = M.rope_sin;
  p.cache = ly.cache;
  p.seq_stride = (int64_t)c.max_context * M.latent;
  p.qabs = decode ? M.dqabs : M.qabs;
  p.part = decode ? M.dpart : M.part;
  p.out = decode ? M.dattn : M.attn;
  p.state = M.state;
  p.heads = c.heads;
  p.nope = c.nope;
  p.rope = c.rope;
  p.v = c.v_dim;
  p.rank = c.kv_lora_rank;
  p.nsplit = decode ? M.nsplit : 1;
  p.eps = c.rms_eps;
  p.scale = c.softmax_scale;
  p.tokens = tokens;
  return p;
}

int read_token(Model &M) {
  int token = 0;
  CK(cudaMemcpyAsync(&token, &M.state->token, sizeof token, cudaMemcpyDeviceToHost, M.st));
  CK(cudaStreamSynchronize(M.st));
  return token;
}
