// The DeepSeek-V2/V3 forward pass on the device and the C ABI (include/dw_cuda.h).
//
// Read top to bottom it follows host/model/model.ts: per layer x += attn(norm(x)); x += ffn(norm(x)),
// the ffn a dense MLP or shared + routed experts. Two schedules of the same function:
//   prefill  T tokens per chunk: cuBLAS GEMMs for every projection, routed experts as one batched
//            GEMM over all experts with the tokens grouped per expert on the device (no host
//            round trip), attention kernels over the latent cache;
//   decode   one token: matrix-vector kernels (one launch for all chosen experts), routing in the
//            last block of the router kernel, argmax at the end; captured once as a CUDA graph.
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <mutex>
#include <unordered_map>
#include <cstdlib>
#include <cstring>
#include <cstddef>
#include <string>
#include <vector>
#include "kernels.cuh"

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------
static thread_local std::string g_error;

void dw_fail(const std::string &msg) { throw DwError(msg); }

void dw_check(cudaError_t e, const char *what, const char *file, int line) {
  if (e == cudaSuccess) return;
  const char *base = strrchr(file, '/');
  throw DwError(std::string(what) + " failed at " + (base ? base + 1 : file) + ":" + std::to_string(line) + ": " +
                cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

static bool sync_each_launch() {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("DW_SYNC");
    v = e && *e && *e != '0';
  }
  return v;
}

bool &pdl_now() {
  static thread_local bool on = false;
  return on;
}

static bool pdl_enabled() {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("DW_PDL");
    v = !(e && *e == '0');
  }
  return v;
}

void dw_smem_limit(const void *kernel, size_t bytes) {
  // Raised once per kernel, outside graph capture (the uncaptured first decode step sets them all).
  static std::mutex mu;
  static std::unordered_map<const void *, size_t> done;
  std::lock_guard<std::mutex> lock(mu);
  size_t &have = done[kernel];
  if (bytes <= 48 * 1024 || bytes <= have) return;
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  have = bytes;
}

void dw_after_launch(const char *name, cudaStream_t s, const char *file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) dw_check(e, (std::string("launch of kernel ") + name).c_str(), file, line);
  if (sync_each_launch()) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    CK(cudaStreamIsCapturing(s, &cs));
    if (cs == cudaStreamCaptureStatusNone) {
      e = cudaStreamSynchronize(s);
      if (e != cudaSuccess) dw_check(e, (std::string("kernel ") + name).c_str(), file, line);
    }
  }
}

template <typename Fn>
static int guarded(Fn &&fn) {
  try {
    g_error.clear();
    return fn();
  } catch (const std::exception &e) {
    g_error = e.what();
    return -1;
  }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------
namespace {

struct Layer {
  DMat m[DW_LAYER_SLOTS];
  float *v[DW_LAYER_SLOTS] = {};
  bool moe = false;
  float *cache = nullptr;
};

struct Shape {
  int64_t rows = 0, cols = 0;
  int experts = 1;
  bool vec = false, required = false;
};

struct Model {
  dw_config c{};
  int qdim = 0, latent = 0, nsm = 0, P = 0, nsplit = 1;
  std::vector<Layer> L;
  DMat embed, head;
  float *final_norm = nullptr, *rope_cos = nullptr, *rope_sin = nullptr;
  cudaStream_t st = nullptr;
  std::vector<void *> allocs;
  bool finalized = false;
  int pos = 0;
  Blas *blas = nullptr;
  cudaGraphExec_t graph = nullptr;
  bool pdl = false;  // programmatic dependent launch in the decode step
  // The one-launch decode (mega.cu): on unless DW_MEGA=0 or the shape is not supported.
  struct MegaPlan {
    bool built = false;
    std::vector<MStage> st;
    std::vector<int64_t> bytes;  // weight bytes each stage reads
    int total = 0, fix = -1, nsplit = 1;
    size_t smem = 0;
    MStage *dev = nullptr;
    int *stage_of = nullptr;
    unsigned long long *ticket = nullptr, *done = nullptr, *aux = nullptr, *prof = nullptr;
  } mp;
  bool mega = false;
  bool mega_prefetch = true;
  // switches of the one-launch decode (environment, read when the model is created)
  int mega_nsplit = 0, mega_rpw = 2, mega_gu_rpw = 2, mega_uv_rpw = 2, mega_minb = 3, mega_evict = 0;

  // prefill buffers (P rows)
  float *x = nullptr, *h = nullptr, *q = nullptr, *qa = nullptr, *kv = nullptr, *qabs = nullptr, *part = nullptr,
        *attn = nullptr, *gu = nullptr, *act = nullptr, *rlog = nullptr, *rw = nullptr, *xd = nullptr, *gud = nullptr,
        *ad = nullptr, *yd = nullptr, *sout = nullptr, *logits = nullptr, *deq = nullptr, *topk_scratch = nullptr;
  int *ids = nullptr, *chosen = nullptr, *counts = nullptr, *list = nullptr, *slot = nullptr;
  __nv_bfloat16 *hi = nullptr, *lo = nullptr;
  int64_t split_cap = 0, deq_cap = 0;
  // decode buffers (one token)
  float *dx = nullptr, *dh = nullptr, *dq = nullptr, *dqa = nullptr, *dkv = nullptr, *dqabs = nullptr, *dpart = nullptr,
        *dattn = nullptr, *dact = nullptr, *drlog = nullptr, *dw = nullptr, *dlogits = nullptr, *tk_vals = nullptr;
  int *dchosen = nullptr, *tk_ids = nullptr, *log = nullptr;
  unsigned *counter = nullptr;
  ArgmaxScratch amax{};
  DState *state = nullptr;
  // staging for loads
  void *stage = nullptr;
  size_t stage_cap = 0;
  const float *last_logits = nullptr;  // device row of the most recent logits (for dw_topk)
  // dw_profile_decode: events between the stages of one uncaptured decode step
  struct Mark {
    std::string name;
    int64_t bytes;
    cudaEvent_t ev;
  };
  std::vector<Mark> *prof = nullptr;

  template <typename T>
  T *alloc(int64_t count, bool zero = true) {
    void *p = nullptr;
    const size_t bytes = std::max<int64_t>(count, 1) * sizeof(T);
    CK(cudaMalloc(&p, bytes));
    allocs.push_back(p);
    if (zero) CK(cudaMemsetAsync(p, 0, bytes, st));
    return static_cast<T *>(p);
  }
  int *pos_ptr() const { return reinterpret_cast<int *>(reinterpret_cast<char *>(state) + offsetof(DState, pos)); }
};

bool is_moe(const dw_config &c, int l) {
  return c.n_routed > 0 && l >= c.first_dense && l % std::max(1, c.moe_freq) == 0;
}

Shape layer_shape(const Model &M, int l, int slot) {
  const dw_config &c = M.c;
  const bool moe = is_moe(c, l);
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
  switch (slot) {
    case DW_ATTN_NORM: vec(c.hidden, true); break;
    case DW_Q_PROJ: if (c.q_lora_rank == 0) mat(qrows, c.hidden, true); break;
    case DW_Q_A: if (c.q_lora_rank > 0) mat(c.q_lora_rank, c.hidden, true); break;
    case DW_Q_A_NORM: if (c.q_lora_rank > 0) vec(c.q_lora_rank, true); break;
    case DW_Q_B: if (c.q_lora_rank > 0) mat(qrows, c.q_lora_rank, true); break;
    case DW_KV_A: mat(c.kv_lora_rank + c.rope, c.hidden, true); break;
    case DW_KV_A_NORM: vec(c.kv_lora_rank, true); break;
    case DW_KV_B: mat((int64_t)c.heads * (c.nope + c.v_dim), c.kv_lora_rank, true); break;
    case DW_O_PROJ: mat(c.hidden, (int64_t)c.heads * c.v_dim, true); break;
    case DW_FFN_NORM: vec(c.hidden, true); break;
    case DW_GATE_UP: if (!moe) mat(2LL * c.inter, c.hidden, true); break;
    case DW_DOWN: if (!moe) mat(c.hidden, c.inter, true); break;
    case DW_ROUTER: if (moe) mat(c.n_routed, c.hidden, true); break;
    case DW_ROUTER_BIAS: if (moe) vec(c.n_routed, false); break;
    case DW_EXP_GATE_UP: if (moe) mat(2LL * c.moe_inter, c.hidden, true, c.n_routed); break;
    case DW_EXP_DOWN: if (moe) mat(c.hidden, c.moe_inter, true, c.n_routed); break;
    case DW_SH_GATE_UP: if (moe && c.n_shared > 0) mat(2 * sh, c.hidden, true); break;
    case DW_SH_DOWN: if (moe && c.n_shared > 0) mat(c.hidden, sh, true); break;
  }
  return s;
}

std::string slot_name(int layer, int slot) {
  static const char *names[] = {"input_layernorm", "q_proj", "q_a_proj", "q_a_layernorm", "q_b_proj",
                                "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj",
                                "post_attention_layernorm", "mlp.gate_proj/up_proj", "mlp.down_proj", "mlp.gate",
                                "mlp.gate.e_score_correction_bias", "experts.gate_proj/up_proj", "experts.down_proj",
                                "shared_experts.gate_proj/up_proj", "shared_experts.down_proj"};
  if (layer < 0) {
    switch (slot) {
      case DW_EMBED: return "embed_tokens";
      case DW_FINAL_NORM: return "norm";
      case DW_LM_HEAD: return "lm_head";
      case DW_ROPE_COS: return "rope cos table";
      case DW_ROPE_SIN: return "rope sin table";
    }
    return "slot " + std::to_string(slot);
  }
  return "layer " + std::to_string(layer) + " " + (slot >= 0 && slot < DW_LAYER_SLOTS ? names[slot] : "?");
}

void alloc_mat(Model &M, DMat &m, const Shape &s, int fmt, int sblk) {
  m.fmt = fmt;
  m.rows = (int)s.rows;
  m.cols = (int)s.cols;
  m.ld = round_up(m.cols, 64);
  m.experts = s.experts;
  m.estride = (int64_t)m.rows * m.ldb();
  m.w = M.alloc<char>(m.estride * m.experts);
  if (fmt == F_FP8 || fmt == F_Q8) {
    m.sblk = sblk;
    m.sld = ceil_div(m.cols, sblk);
    m.sestride = (int64_t)m.rows * m.sld;
    m.s = M.alloc<float>(m.sestride * m.experts + 4);  // + 4: 16-byte rounding of L2 prefetches
  }
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

// Target slot of a load: matrix or vector pointer.
struct Target {
  DMat *m = nullptr;
  float **v = nullptr;
  Shape s;
};

Target target(Model &M, int layer, int slot) {
  Target t;
  if (layer < 0) {
    const dw_config &c = M.c;
    switch (slot) {
      case DW_EMBED: t.m = &M.embed; t.s.rows = c.vocab; t.s.cols = c.hidden; break;
      case DW_LM_HEAD: t.m = &M.head; t.s.rows = c.vocab; t.s.cols = c.hidden; break;
      case DW_FINAL_NORM: t.v = &M.final_norm; t.s.rows = c.hidden; t.s.vec = true; break;
      case DW_ROPE_COS: t.v = &M.rope_cos; t.s.rows = (int64_t)c.max_context * (c.rope / 2); t.s.vec = true; break;
      case DW_ROPE_SIN: t.v = &M.rope_sin; t.s.rows = (int64_t)c.max_context * (c.rope / 2); t.s.vec = true; break;
      default: dw_fail("unknown global slot " + std::to_string(slot));
    }
    t.s.required = true;
    t.s.cols = t.s.vec ? 1 : t.s.cols;
    return t;
  }
  if (layer >= M.c.layers) dw_fail("layer " + std::to_string(layer) + " out of range");
  if (slot < 0 || slot >= DW_LAYER_SLOTS) dw_fail("unknown layer slot " + std::to_string(slot));
  t.s = layer_shape(M, layer, slot);
  if (t.s.rows == 0) dw_fail(slot_name(layer, slot) + " is not part of this model's configuration");
  if (t.s.vec) t.v = &M.L[layer].v[slot];
  else t.m = &M.L[layer].m[slot];
  return t;
}

// ---- the decode step -------------------------------------------------------------------------------
struct Out {
  const DMat *W;
  float *y;
  bool add;
};

// Several matrices over one input: one launch per weight format present.
void gemv_multi(Model &M, const float *x, const float *norm, int cols, std::initializer_list<Out> outs,
                float *h_out = nullptr) {
  std::vector<Out> todo(outs);
  while (!todo.empty()) {
    const int fmt = todo[0].W->fmt;
    GemvParams p{};
    p.x = x;
    p.norm = norm;
    p.eps = M.c.rms_eps;
    p.cols = cols;
    p.h_out = h_out;
    int64_t rows = 0;
    std::vector<Out> rest;
    for (const Out &o : todo) {
      if (o.W->fmt != fmt || p.nseg == GEMV_MAXSEG) {
        rest.push_back(o);
        continue;
      }
      if (o.W->cols != cols) dw_fail("internal: gemv input size mismatch");
      p.seg[p.nseg++] = GemvSeg{wref(*o.W), o.W->rows, o.add ? 1 : 0, o.y, 0};
      rows += o.W->rows;
    }
    p.rpw = gemv_rows_per_warp(rows, M.nsm);
    launch_gemv(M.st, fmt, p, false);
    todo.swap(rest);
    h_out = nullptr;
  }
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
  ra.bias = ly.v[DW_ROUTER_BIAS];
  return ra;
}

MlaParams mla_params(Model &M, Layer &ly, int tokens, bool decode) {
  const dw_config &c = M.c;
  MlaParams p{};
  p.q = decode ? M.dq : M.q;
  p.q_ld = c.heads * M.qdim;
  p.kv = decode ? M.dkv : M.kv;
  p.kv_ld = M.latent;
  p.kvb = wref(ly.m[DW_KV_B]);
  p.kvb_fmt = ly.m[DW_KV_B].fmt;
  p.kv_norm = ly.v[DW_KV_A_NORM];
  p.cos = M.rope_cos;
  p.sin = M.rope_sin;
  p.cache = ly.cache;
  p.qabs = decode ? M.dqabs : M.qabs;
  p.part = decode ? M.dpart : M.part;
  p.out = decode ? M.dattn : M.attn;
  p.pos = M.pos_ptr();
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

MoeParams moe_params(Model &M, Layer &ly, bool moe) {
  const dw_config &c = M.c;
  MoeParams p{};
  p.hidden = c.hidden;
  p.eps = c.rms_eps;
  p.act = M.dact;
  p.fixed_off = moe ? c.topk * round_up(c.moe_inter, 8) : 0;
  p.xout = M.dx;
  // gate/up rows per warp: DW_GU_RPW (1..4, default 2), read when the step is built (captured)
  const char *g = getenv("DW_GU_RPW");
  p.rpw = g && *g >= '1' && *g <= '4' ? *g - '0' : 2;
  p.rpw_down = 1;
  if (moe) {
    const DMat &gu = ly.m[DW_EXP_GATE_UP], &dn = ly.m[DW_EXP_DOWN];
    p.gu = wref(gu);
    p.dn = wref(dn);
    p.gu_estride = gu.estride;
    p.dn_estride = dn.estride;
    p.gu_sestride = gu.sestride;
    p.dn_sestride = dn.sestride;
    p.inter = c.moe_inter;
    p.inter8 = round_up(c.moe_inter, 8);
    p.k = c.topk;
    p.chosen = M.dchosen;
    p.weights = M.dw;
    p.x = M.dh;  // normalised by the router kernel
    p.norm = nullptr;
    if (c.n_shared > 0) {
      p.fgu = wref(ly.m[DW_SH_GATE_UP]);
      p.fdn = wref(ly.m[DW_SH_DOWN]);
      p.finter = c.moe_inter * c.n_shared;
      p.has_fixed = 1;
    }
  } else {
    p.fgu = wref(ly.m[DW_GATE_UP]);
    p.fdn = wref(ly.m[DW_DOWN]);
    p.finter = c.inter;
    p.has_fixed = 1;
    p.x = M.dx;
    p.norm = ly.v[DW_FFN_NORM];
  }
  return p;
}

int64_t bytes_of(const DMat &W, int experts = -1) {
  if (!W.ok()) return 0;
  const int n = experts < 0 ? W.experts : experts;
  return (W.estride + (W.s ? W.sestride * 4 : 0)) * n;
}

// Profiling: the time from one mark to the next is charged to the first mark's name.
void mark(Model &M, const char *name, int64_t bytes) {
  if (!M.prof) return;
  cudaEvent_t e;
  CK(cudaEventCreate(&e));
  CK(cudaEventRecord(e, M.st));
  M.prof->push_back({name, bytes, e});
}

// DW_FUSE_ROUTER=0: a separate router kernel. Read whenever the step is built (a graph captures it
// once), so that models of one process can differ.
static bool fuse_router() {
  const char *e = getenv("DW_FUSE_ROUTER");
  return !(e && *e == '0');
}

// ---- the one-launch decode (mega.cu) --------------------------------------------------------------

enum MegaKind { K_QKV, K_QB, K_ABSORB, K_ATTN, K_UV, K_OPROJ, K_ROUTER, K_FIXED_GU, K_ROUTED_GU, K_DOWN, K_DENSE_GU,
                K_DENSE_DOWN, K_COUNT };
const char *mega_kind_name(int k) {
  static const char *n[] = {"q|kv_a gemv",        "q_b gemv",         "absorb + cache row", "attention",
                            "W_UV (+ merge)",     "o_proj gemv",      "router + routing",   "shared gate/up",
                            "routed gate/up",     "down (routed+shared)", "dense gate/up",  "dense down"};
  return k >= 0 && k < K_COUNT ? n[k] : "?";
}

// Whether the one-launch decode can run this model (else the per-kernel schedule runs).
bool mega_supported(const Model &M, std::string *why) {
  const dw_config &c = M.c;
  if (c.rope > 256) {
    if (why) *why = "qk_rope_head_dim > 256";
    return false;
  }
  if (c.n_routed > 0 && c.topk > 32) {
    if (why) *why = "more than 32 experts per token";
    return false;
  }
  return true;
}

void build_mega(Model &M) {
  Model::MegaPlan &P = M.mp;
  if (P.built) return;
  const dw_config &c = M.c;
  P.st.clear();
  P.bytes.clear();
  P.total = 0;
  P.nsplit = M.mega_nsplit > 0 ? std::min(M.nsplit, M.mega_nsplit) : std::max(1, std::min(M.nsplit, M.nsm / c.heads));
  // rows per warp of the stages (an item is 8 warps)
  const int MEGA_RPW_GEMV = M.mega_rpw, MEGA_RPW_UV = M.mega_uv_rpw, MEGA_RPW_GU = M.mega_gu_rpw;
  size_t smem = 0;
  bool all_bf16 = true;
  auto note_fmt = [&](const DMat &W) {
    if (W.ok() && W.fmt != F_BF16) all_bf16 = false;
  };
  auto add = [&](MStage s, int kind, int64_t bytes, std::initializer_list<int> deps, size_t sm_floats) -> int {
    s.first = P.total;
    P.total += s.nitems;
    s.kind = kind;
    if (s.target == 0) s.target = s.nitems;
    s.ndep = 0;
    for (int d : deps)
      if (d >= 0) s.dep[s.ndep++] = d;
    if (s.nitems <= 0) dw_fail("internal: empty decode stage");
    P.st.push_back(s);
    P.bytes.push_back(bytes);
    smem = std::max(smem, sm_floats * 4);
    return (int)P.st.size() - 1;
  };
  auto seg = [&](GemvParams &g, const DMat &W, float *y, bool addy) {
    if (W.cols != g.cols) dw_fail("internal: gemv input size mismatch");
    GemvSeg &sg = g.seg[g.nseg++];
    sg.w = wref(W);
    sg.rows = W.rows;
    sg.add = addy ? 1 : 0;
    sg.y = y;
    sg.fmt = W.fmt;
    note_fmt(W);
  };
  auto gemv_items = [&](GemvParams &g) {
    int items = 0;
    for (int i = 0; i < g.nseg; i++) {
      g.seg[i].block0 = items;
      items += ceil_div(g.seg[i].rows, 8 * g.rpw);
    }
    return items;
  };
  auto gemv_stage = [&](const float *x, const float *norm, int cols) {
    MStage s{};
    s.type = MS_GEMV;
    s.pre_dep = -1;
    s.g.x = x;
    s.g.norm = norm;
    s.g.eps = c.rms_eps;
    s.g.cols = cols;
    s.g.rpw = MEGA_RPW_GEMV;
    return s;
  };
  const int I = c.moe_inter, I8 = round_up(std::max(I, 1), 8), k = c.topk;
  int prev = -1;
  for (int l = 0; l < c.layers; l++) {
    Layer &ly = M.L[l];
    // attention: q (or q_a) and kv_a over norm(x)
    MStage s1 = gemv_stage(M.dx, ly.v[DW_ATTN_NORM], c.hidden);
    s1.layer = l;
    if (c.q_lora_rank > 0) seg(s1.g, ly.m[DW_Q_A], M.dqa, false);
    else seg(s1.g, ly.m[DW_Q_PROJ], M.dq, false);
    seg(s1.g, ly.m[DW_KV_A], M.dkv, false);
    s1.nitems = gemv_items(s1.g);
    const int i1 = add(s1, K_QKV, bytes_of(ly.m[DW_Q_PROJ]) + bytes_of(ly.m[DW_Q_A]) + bytes_of(ly.m[DW_KV_A]), {prev},
                       round_up(c.hidden, 8));
    int i1b = -1;
    if (c.q_lora_rank > 0) {
      MStage s = gemv_stage(M.dqa, ly.v[DW_Q_A_NORM], c.q_lora_rank);
      s.layer = l;
      seg(s.g, ly.m[DW_Q_B], M.dq, false);
      s.nitems = gemv_items(s.g);
      i1b = add(s, K_QB, bytes_of(ly.m[DW_Q_B]), {i1}, round_up(c.q_lora_rank, 8));
    }
    MlaParams a = mla_params(M, ly, 1, true);
    a.nsplit = P.nsplit;
    note_fmt(ly.m[DW_KV_B]);
    const int64_t kvb = bytes_of(ly.m[DW_KV_B]);
    const int64_t kvb_uk = kvb * c.nope / std::max(1, c.nope + c.v_dim);
    MStage s2{};
    s2.type = MS_ABSORB;
    s2.pre_dep = -1;
    s2.layer = l;
    s2.a = a;
    s2.fmt = a.kvb_fmt;
    s2.nitems = c.heads * ceil_div(c.kv_lora_rank, 256) + 1;
    const int i2 = add(s2, K_ABSORB, kvb_uk, {i1, i1b}, 8 * 256 + round_up(c.nope, 4));
    MStage s3 = s2;
    s3.type = MS_ATTN;
    s3.nitems = c.heads * P.nsplit;
    const int i3 = add(s3, K_ATTN, 0, {i2}, round_up(M.latent, 4) + 8 * c.kv_lora_rank);
    MStage s4 = s2;
    s4.type = MS_UV;
    s4.a.tokens = MEGA_RPW_UV;
    s4.nitems = c.heads * ceil_div(c.v_dim, 8 * MEGA_RPW_UV);
    const int i4 = add(s4, K_UV, kvb - kvb_uk, {i3}, round_up(c.kv_lora_rank, 8));
    MStage s5 = gemv_stage(M.dattn, nullptr, c.heads * c.v_dim);
    s5.layer = l;
    seg(s5.g, ly.m[DW_O_PROJ], M.dx, true);
    s5.nitems = gemv_items(s5.g);
    const int i5 = add(s5, K_OPROJ, bytes_of(ly.m[DW_O_PROJ]), {i4}, round_up(c.heads * c.v_dim, 8));
    // feed-forward over norm(x)
    MoeParams base{};
    base.hidden = c.hidden;
    base.eps = c.rms_eps;
    base.x = M.dx;
    base.norm = ly.v[DW_FFN_NORM];
    base.act = M.dact;
    base.xout = M.dx;
    base.rpw = MEGA_RPW_GU;
    if (ly.moe) {
      const DMat &gu = ly.m[DW_EXP_GATE_UP], &dn = ly.m[DW_EXP_DOWN];
      note_fmt(gu);
      note_fmt(dn);
      note_fmt(ly.m[DW_SH_GATE_UP]);
      note_fmt(ly.m[DW_SH_DOWN]);
      MStage r{};
      r.type = MS_ROUTER;
      r.pre_dep = -1;
      r.layer = l;
      r.g.x = M.dx;
      r.g.norm = ly.v[DW_FFN_NORM];
      r.g.eps = c.rms_eps;
      r.g.cols = c.hidden;
      r.g.rpw = 1;
      seg(r.g, ly.m[DW_ROUTER], M.drlog, false);
      r.g.ra = route_args(M, ly);
      r.g.chosen = M.dchosen;
      r.g.weights = M.dw;
      r.nitems = gemv_items(r.g);
      r.target = 1;
      const int ir = add(r, K_ROUTER, bytes_of(ly.m[DW_ROUTER]), {i5},
                         round_up(c.hidden, 8) + 2 * c.n_routed + c.n_group + 8);
      int ish = -1;
      if (c.n_shared > 0) {
        MStage s{};
        s.type = MS_GATEUP;
        s.pre_dep = -1;
        s.layer = l;
        s.m = base;
        s.m.k = 0;
        s.m.fgu = wref(ly.m[DW_SH_GATE_UP]);
        s.m.finter = I * c.n_shared;
        s.m.has_fixed = 1;
        s.m.fixed_off = k * I8;
        s.fmt = ly.m[DW_SH_GATE_UP].fmt;
        s.nitems = ceil_div(s.m.finter, 8 * s.m.rpw);
        ish = add(s, K_FIXED_GU, bytes_of(ly.m[DW_SH_GATE_UP]), {i5}, round_up(c.hidden, 8));
      }
      MStage g{};
      g.type = MS_GATEUP;
      g.pre_dep = ir;
      g.layer = l;
      g.m = base;
      g.m.k = k;
      g.m.gu = wref(gu);
      g.m.gu_estride = gu.estride;
      g.m.gu_sestride = gu.sestride;
      g.m.inter = I;
      g.m.inter8 = I8;
      g.m.chosen = M.dchosen;
      g.m.bps_r = ceil_div(I, 8 * g.m.rpw);
      g.fmt = gu.fmt;
      g.nitems = k * g.m.bps_r;
      const int ig = add(g, K_ROUTED_GU, bytes_of(gu, k), {ir}, round_up(c.hidden, 8));
      MStage d{};
      d.type = MS_DOWN;
      d.pre_dep = ir;
      d.layer = l;
      d.m = base;
      d.m.k = k;
      d.m.dn = wref(dn);
      d.m.dn_estride = dn.estride;
      d.m.dn_sestride = dn.sestride;
      d.m.inter = I;
      d.m.inter8 = I8;
      d.m.chosen = M.dchosen;
      d.m.weights = M.dw;
      if (c.n_shared > 0) {
        d.m.fdn = wref(ly.m[DW_SH_DOWN]);
        d.m.finter = I * c.n_shared;
        d.m.has_fixed = 1;
      }
      d.fmt = dn.fmt;
      d.nitems = ceil_div(c.hidden, MEGA_DOWN_ROWS);
      prev = add(d, K_DOWN, bytes_of(dn, k) + bytes_of(ly.m[DW_SH_DOWN]), {ig, ish}, 8 * MEGA_DOWN_ROWS);
    } else {
      note_fmt(ly.m[DW_GATE_UP]);
      note_fmt(ly.m[DW_DOWN]);
      MStage s{};
      s.type = MS_GATEUP;
      s.pre_dep = -1;
      s.layer = l;
      s.m = base;
      s.m.k = 0;
      s.m.fgu = wref(ly.m[DW_GATE_UP]);
      s.m.finter = c.inter;
      s.m.has_fixed = 1;
      s.m.fixed_off = 0;
      s.fmt = ly.m[DW_GATE_UP].fmt;
      s.nitems = ceil_div(c.inter, 8 * s.m.rpw);
      const int ig = add(s, K_DENSE_GU, bytes_of(ly.m[DW_GATE_UP]), {i5}, round_up(c.hidden, 8));
      MStage d{};
      d.type = MS_DOWN;
      d.pre_dep = -1;
      d.layer = l;
      d.m = base;
      d.m.k = 0;
      d.m.fdn = wref(ly.m[DW_DOWN]);
      d.m.finter = c.inter;
      d.m.has_fixed = 1;
      d.fmt = ly.m[DW_DOWN].fmt;
      d.nitems = ceil_div(c.hidden, MEGA_DOWN_ROWS);
      prev = add(d, K_DENSE_DOWN, bytes_of(ly.m[DW_DOWN]), {ig}, 8 * MEGA_DOWN_ROWS);
    }
  }
  for (const MStage &s : P.st)
    for (int d = 0; d < s.ndep; d++)
      if (s.dep[d] >= (int)(&s - P.st.data())) dw_fail("internal: a decode stage depends on a later one");
  P.fix = all_bf16 ? F_BF16 : -1;
  P.smem = smem;
  int dev = 0, optin = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (P.smem + 2048 > (size_t)optin) dw_fail("the one-launch decode needs " + std::to_string(P.smem) + " bytes of shared memory");
  const int n = (int)P.st.size();
  if (!P.dev) {
    P.dev = M.alloc<MStage>(n);
    P.ticket = M.alloc<unsigned long long>(MS_STRIDE);
    P.done = M.alloc<unsigned long long>((int64_t)n * MS_STRIDE);
    P.aux = M.alloc<unsigned long long>((int64_t)n * MS_STRIDE);
    P.prof = M.alloc<unsigned long long>(n + 1);
    P.stage_of = M.alloc<int>(P.total);
  }
  std::vector<int> stage_of(P.total);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < P.st[i].nitems; j++) stage_of[P.st[i].first + j] = i;
  CK(cudaMemcpyAsync(P.dev, P.st.data(), sizeof(MStage) * n, cudaMemcpyHostToDevice, M.st));
  CK(cudaMemcpyAsync(P.stage_of, stage_of.data(), sizeof(int) * P.total, cudaMemcpyHostToDevice, M.st));
  CK(cudaStreamSynchronize(M.st));
  P.built = true;
}

// Builds the one-launch plan once; a shape it cannot run falls back to the per-kernel schedule.
void ensure_mega(Model &M) {
  if (!M.mega || M.mp.built) return;
  try {
    build_mega(M);
  } catch (const std::exception &e) {
    fprintf(stderr, "deepwasm cuda: decode one kernel per stage (%s)\n", e.what());
    M.mega = false;
  }
}

void launch_mega_step(Model &M) {
  Model::MegaPlan &P = M.mp;
  if (!P.built) dw_fail("internal: the one-launch decode was not built");
  MegaArgs a{};
  a.stages = P.dev;
  a.stage_of = P.stage_of;
  a.nstages = (int)P.st.size();
  a.total = P.total;
  a.ticket = P.ticket;
  a.done = P.done;
  a.aux = P.aux;
  a.prof = nullptr;
  if (M.prof) {
    a.prof = P.prof;
    CK(cudaMemsetAsync(P.prof, 0, sizeof(unsigned long long) * (a.nstages + 1), M.st));
  }
  a.state = M.state;
  a.prefetch = M.mega_prefetch ? 1 : 0;
  a.evict_routed = M.mega_evict;
  launch_mega(M.st, a, P.fix, P.smem, M.mega_minb);
}

// Where the launch's time went: from the end time of each stage's last item. "exposed" charges
// each stage the time from the previous stage end (in time order) to its own; "after inputs" is
// the time from the last of its inputs to its own end.
std::string mega_profile(Model &M) {
  Model::MegaPlan &P = M.mp;
  const int n = (int)P.st.size();
  std::vector<unsigned long long> t(n + 1);
  CK(cudaMemcpy(t.data(), P.prof, sizeof(unsigned long long) * (n + 1), cudaMemcpyDeviceToHost));
  const unsigned long long t0 = t[n];
  std::vector<int> order(n);
  for (int i = 0; i < n; i++) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int x, int y) { return t[x] < t[y]; });
  std::vector<double> exposed(K_COUNT, 0), after(K_COUNT, 0), mb(K_COUNT, 0);
  std::vector<int> cnt(K_COUNT, 0);
  unsigned long long prev = t0;
  for (int i : order) {
    const int kd = P.st[i].kind;
    exposed[kd] += (double)(t[i] > prev ? t[i] - prev : 0) * 1e-6;
    prev = std::max(prev, t[i]);
    unsigned long long ready = t0;
    const MStage &s = P.st[i];
    for (int d = 0; d < s.ndep; d++) ready = std::max(ready, t[s.dep[d]]);
    after[kd] += (double)(t[i] > ready ? t[i] - ready : 0) * 1e-6;
    mb[kd] += P.bytes[i] / 1e6;
    cnt[kd]++;
  }
  std::string out;
  char line[256];
  snprintf(line, sizeof line, "  in the layers' launch (%d stages, %d items; %s kernel, %d attention splits):\n", n,
           P.total, P.fix == F_BF16 ? "bf16" : "generic", P.nsplit);
  out += line;
  snprintf(line, sizeof line, "  %-22s %4s %10s %12s %9s\n", "stage", "n", "exposed ms", "after-in ms", "MB");
  out += line;
  double te = 0;
  for (int kd = 0; kd < K_COUNT; kd++) {
    if (!cnt[kd]) continue;
    te += exposed[kd];
    snprintf(line, sizeof line, "  %-22s %4d %10.3f %12.3f %9.1f\n", mega_kind_name(kd), cnt[kd], exposed[kd], after[kd],
             mb[kd]);
    out += line;
  }
  snprintf(line, sizeof line, "  %-22s      %10.3f\n", "launch (first ticket to last end)", te);
  out += line;
  return out;
}

// Launches after this use programmatic dependent launch while M.pdl is on; off again on exit.
struct PdlScope {
  PdlScope() { pdl_now() = false; }
  ~PdlScope() { pdl_now() = false; }
};

void decode_step(Model &M) {
  const dw_config &c = M.c;
  PdlScope scope;
  mark(M, "embed", 0);
  launch_embed(M.st, M.embed, nullptr, M.state, M.dx, 1, c.hidden);
  pdl_now() = M.pdl && !M.prof;
  if (M.mega) {
    int64_t b = 0;
    for (int64_t x : M.mp.bytes) b += x;
    mark(M, "layers (one launch)", b);
    launch_mega_step(M);
  }
  for (int l = 0; l < c.layers && !M.mega; l++) {
    Layer &ly = M.L[l];
    // attention
    mark(M, "q/kv_a gemv", bytes_of(ly.m[DW_Q_PROJ]) + bytes_of(ly.m[DW_Q_A]) + bytes_of(ly.m[DW_Q_B]) +
                               bytes_of(ly.m[DW_KV_A]));
    if (c.q_lora_rank > 0) {
      gemv_multi(M, M.dx, ly.v[DW_ATTN_NORM], c.hidden, {{&ly.m[DW_Q_A], M.dqa, false}, {&ly.m[DW_KV_A], M.dkv, false}});
      gemv_multi(M, M.dqa, ly.v[DW_Q_A_NORM], c.q_lora_rank, {{&ly.m[DW_Q_B], M.dq, false}});
    } else {
      gemv_multi(M, M.dx, ly.v[DW_ATTN_NORM], c.hidden, {{&ly.m[DW_Q_PROJ], M.dq, false}, {&ly.m[DW_KV_A], M.dkv, false}});
    }
    mark(M, "mla (absorb, attend, W_UV)", bytes_of(ly.m[DW_KV_B]));
    launch_mla(M.st, mla_params(M, ly, 1, true));
    mark(M, "o_proj gemv", bytes_of(ly.m[DW_O_PROJ]));
    gemv_multi(M, M.dattn, nullptr, c.heads * c.v_dim, {{&ly.m[DW_O_PROJ], M.dx, true}});
    // feed-forward
    const DMat &gu = ly.moe ? ly.m[DW_EXP_GATE_UP] : ly.m[DW_GATE_UP];
    const int64_t routed_bytes = bytes_of(ly.m[DW_EXP_GATE_UP], c.topk) + bytes_of(ly.m[DW_EXP_DOWN], c.topk);
    if (ly.moe && fuse_router() && c.n_shared > 0 && ly.m[DW_ROUTER].fmt == ly.m[DW_SH_GATE_UP].fmt) {
      // 1: router logits + routing (the first blocks) with the shared experts' gate/up (the rest);
      // 2: the chosen experts' gate/up; 3: every slot's down, weighted, into the residual.
      mark(M, "router + shared gate/up", bytes_of(ly.m[DW_ROUTER]) + bytes_of(ly.m[DW_SH_GATE_UP]));
      MoeParams a = moe_params(M, ly, true);
      a.k = 0;
      a.x = M.dx;
      a.norm = ly.v[DW_FFN_NORM];
      a.h_out = M.dh;
      a.router = wref(ly.m[DW_ROUTER]);
      a.router_blocks = ceil_div(c.n_routed, 8);
      a.logits = M.drlog;
      a.ra = route_args(M, ly);
      a.route_e = M.dchosen;
      a.route_w = M.dw;
      a.counter = M.counter;
      launch_moe_gateup(M.st, ly.m[DW_SH_GATE_UP].fmt, a);
      mark(M, "routed gate/up", bytes_of(ly.m[DW_EXP_GATE_UP], c.topk));
      MoeParams r = moe_params(M, ly, true);
      r.has_fixed = 0;
      launch_moe_gateup(M.st, gu.fmt, r);
      mark(M, "down (routed + shared)", bytes_of(ly.m[DW_EXP_DOWN], c.topk) + bytes_of(ly.m[DW_SH_DOWN]));
      MoeParams d = moe_params(M, ly, true);
      launch_moe_down(M.st, gu.fmt, d);
    } else if (ly.moe) {
      mark(M, "router + routing", bytes_of(ly.m[DW_ROUTER]));
      GemvParams p{};
      p.x = M.dx;
      p.norm = ly.v[DW_FFN_NORM];
      p.eps = c.rms_eps;
      p.cols = c.hidden;
      p.h_out = M.dh;
      p.nseg = 1;
      p.seg[0] = GemvSeg{wref(ly.m[DW_ROUTER]), c.n_routed, 0, M.drlog, 0};
      p.rpw = 1;
      p.ra = route_args(M, ly);
      p.chosen = M.dchosen;
      p.weights = M.dw;
      p.counter = M.counter;
      launch_gemv(M.st, ly.m[DW_ROUTER].fmt, p, true);
      mark(M, "experts gate/up + down", routed_bytes + bytes_of(ly.m[DW_SH_GATE_UP]) + bytes_of(ly.m[DW_SH_DOWN]));
      MoeParams mp = moe_params(M, ly, true);
      launch_moe_gateup(M.st, gu.fmt, mp);
      launch_moe_down(M.st, gu.fmt, mp);
    } else {
      MoeParams mp = moe_params(M, ly, false);
      mark(M, "dense mlp", bytes_of(ly.m[DW_GATE_UP]) + bytes_of(ly.m[DW_DOWN]));
      launch_moe_gateup(M.st, gu.fmt, mp);
      launch_moe_down(M.st, gu.fmt, mp);
    }
  }
  mark(M, "lm_head gemv", bytes_of(M.head));
  gemv_multi(M, M.dx, M.final_norm, c.hidden, {{&M.head, M.dlogits, false}});
  mark(M, "argmax", 0);
  launch_argmax(M.st, M.dlogits, c.vocab, M.state, 1, M.amax);
  mark(M, "end", 0);
}

// ---- prefill -------------------------------------------------------------------------------------------
// Y[b][M, rows] (ldy) (+)= X[b][M, cols] (ldx) . W[b]^T for the matrices of experts [e0, e0 + batch).
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

void prefill_chunk(Model &M, const int32_t *ids_host, int T, int pos0, bool all_rows, float *logits_host) {
  const dw_config &c = M.c;
  const int H = c.hidden;
  CK(cudaMemcpyAsync(M.ids, ids_host, sizeof(int32_t) * T, cudaMemcpyHostToDevice, M.st));
  launch_set_state(M.st, M.state, 0, pos0);
  launch_embed(M.st, M.embed, M.ids, nullptr, M.x, T, H);
  for (int l = 0; l < c.layers; l++) {
    Layer &ly = M.L[l];
    const int qld = c.heads * M.qdim;
    launch_rmsnorm_rows(M.st, M.h, H, M.x, H, ly.v[DW_ATTN_NORM], H, T, c.rms_eps);
    if (c.q_lora_rank > 0) {
      const int R = c.q_lora_rank;
      gemm(M, ly.m[DW_Q_A], 0, 1, M.h, H, 0, M.qa, R, 0, T, 0.f);
      launch_rmsnorm_rows(M.st, M.qa, R, M.qa, R, ly.v[DW_Q_A_NORM], R, T, c.rms_eps);
      gemm(M, ly.m[DW_Q_B], 0, 1, M.qa, R, 0, M.q, qld, 0, T, 0.f);
    } else {
      gemm(M, ly.m[DW_Q_PROJ], 0, 1, M.h, H, 0, M.q, qld, 0, T, 0.f);
    }
    gemm(M, ly.m[DW_KV_A], 0, 1, M.h, H, 0, M.kv, M.latent, 0, T, 0.f);
    launch_mla(M.st, mla_params(M, ly, T, false));
    const int av = c.heads * c.v_dim;
    gemm(M, ly.m[DW_O_PROJ], 0, 1, M.attn, av, 0, M.x, H, 0, T, 1.f);

    launch_rmsnorm_rows(M.st, M.h, H, M.x, H, ly.v[DW_FFN_NORM], H, T, c.rms_eps);
    if (ly.moe) {
      const int E = c.n_routed, k = c.topk, I = c.moe_inter;
      gemm(M, ly.m[DW_ROUTER], 0, 1, M.h, H, 0, M.rlog, E, 0, T, 0.f);
      launch_route(M.st, M.rlog, T, route_args(M, ly), M.chosen, M.rw);
      launch_dispatch(M.st, M.chosen, T * k, E, T, M.counts, M.list, M.slot);
      launch_gather(M.st, M.h, H, M.counts, M.list, k, E, T, M.xd);
      // Every expert over T rows (its tokens first): one batched GEMM, sizes known on the host.
      gemm(M, ly.m[DW_EXP_GATE_UP], 0, E, M.xd, H, (int64_t)T * H, M.gud, 2 * I, (int64_t)T * 2 * I, T, 0.f);
      launch_silu_mul(M.st, M.ad, I, M.gud, 2 * I, I, E * T);
      gemm(M, ly.m[DW_EXP_DOWN], 0, E, M.ad, I, (int64_t)T * I, M.yd, H, (int64_t)T * H, T, 0.f);
      const float *shared_out = nullptr;
      if (c.n_shared > 0) {
        const int S = I * c.n_shared;
        gemm(M, ly.m[DW_SH_GATE_UP], 0, 1, M.h, H, 0, M.gu, 2 * S, 0, T, 0.f);
        launch_silu_mul(M.st, M.act, S, M.gu, 2 * S, S, T);
        gemm(M, ly.m[DW_SH_DOWN], 0, 1, M.act, S, 0, M.sout, H, 0, T, 0.f);
        shared_out = M.sout;
      }
      launch_combine(M.st, M.x, shared_out, M.yd, M.chosen, M.rw, M.slot, T, k, H, T);
    } else {
      const int I = c.inter;
      gemm(M, ly.m[DW_GATE_UP], 0, 1, M.h, H, 0, M.gu, 2 * I, 0, T, 0.f);
      launch_silu_mul(M.st, M.act, I, M.gu, 2 * I, I, T);
      gemm(M, ly.m[DW_DOWN], 0, 1, M.act, I, 0, M.x, H, 0, T, 1.f);
    }
  }
  const int rows = all_rows ? T : 1;
  const float *last = M.x + (int64_t)(T - rows) * H;
  launch_rmsnorm_rows(M.st, M.h, H, last, H, M.final_norm, H, rows, c.rms_eps);
  gemm(M, M.head, 0, 1, M.h, H, 0, M.logits, c.vocab, 0, rows, 0.f);
  const float *lastrow = M.logits + (int64_t)(rows - 1) * c.vocab;
  launch_argmax(M.st, lastrow, c.vocab, M.state, T, M.amax);
  M.last_logits = lastrow;
  if (logits_host) {
    CK(cudaMemcpyAsync(logits_host, M.logits, sizeof(float) * rows * c.vocab, cudaMemcpyDeviceToHost, M.st));
  }
}

// A wait of the one-launch decode that timed out (never expected: it would be a bug) becomes an
// error naming the stages; the report is cleared so that the next call starts clean.
void check_state(Model &M, const DState &s) {
  if (!s.err) return;
  const Model::MegaPlan &P = M.mp;
  auto name = [&](int i) {
    if (i < 0 || i >= (int)P.st.size()) return std::string("stage ") + std::to_string(i);
    return std::string(mega_kind_name(P.st[i].kind)) + " of layer " + std::to_string(P.st[i].layer) + " (stage " +
           std::to_string(i) + ")";
  };
  const std::string msg = "decode step: " + name(s.err_stage) + " waited over 2 s for " + name(s.err_dep) + " (" +
                          std::to_string(s.err_have) + " of " + std::to_string(s.err_need) + " completions)";
  CK(cudaMemsetAsync(&M.state->err, 0, sizeof(DState) - offsetof(DState, err), M.st));
  CK(cudaStreamSynchronize(M.st));
  dw_fail(msg);
}

int read_token(Model &M) {
  DState s{};
  CK(cudaMemcpyAsync(&s, M.state, sizeof(DState), cudaMemcpyDeviceToHost, M.st));
  CK(cudaStreamSynchronize(M.st));
  check_state(M, s);
  return s.token;
}

// Captures the decode step once. The state must already hold the step's token and position: the
// step runs once uncaptured first (kernel attributes set, launch errors named; with DW_SYNC=1 each
// kernel checked), which computes exactly what the replay that follows recomputes.
void capture(Model &M) {
  cudaGraph_t g = nullptr;
  CK(cudaStreamBeginCapture(M.st, cudaStreamCaptureModeThreadLocal));
  try {
    decode_step(M);
  } catch (...) {
    cudaGraph_t dummy = nullptr;
    cudaStreamEndCapture(M.st, &dummy);
    if (dummy) cudaGraphDestroy(dummy);
    throw;
  }
  CK(cudaStreamEndCapture(M.st, &g));
  cudaError_t e = cudaGraphInstantiate(&M.graph, g, 0);
  cudaGraphDestroy(g);
  CK(e);
}

void ensure_graph(Model &M) {
  if (M.graph) return;
  M.pdl = pdl_enabled();
  ensure_mega(M);
  decode_step(M);
  CK(cudaStreamSynchronize(M.st));
  if (!M.pdl) return capture(M);
  try {
    capture(M);
  } catch (const std::exception &e) {
    // A driver that cannot capture programmatic launches: clear the error, capture without them.
    cudaGetLastError();
    M.graph = nullptr;
    M.pdl = false;
    fprintf(stderr, "deepwasm cuda: decode graph without programmatic dependent launch (%s)\n", e.what());
    capture(M);
  }
}

Model *as_model(void *m) {
  if (!m) dw_fail("null model handle");
  return static_cast<Model *>(m);
}

void require_finalized(Model &M) {
  if (!M.finalized) dw_fail("dw_finalize has not been called");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// C ABI
// ---------------------------------------------------------------------------------------------
extern "C" {

int dw_abi_version(void) { return DW_ABI_VERSION; }

const char *dw_last_error(void) { return g_error.c_str(); }

int dw_device_info(char *info, int32_t len) {
  return guarded([&]() -> int {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      g_error = std::string("cudaGetDeviceCount: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
      if (info && len > 0) snprintf(info, len, "%s", g_error.c_str());
      return 0;
    }
    if (n > 0 && info && len > 0) {
      cudaDeviceProp p{};
      CK(cudaGetDeviceProperties(&p, 0));
      int rt = 0, drv = 0;
      cudaRuntimeGetVersion(&rt);
      cudaDriverGetVersion(&drv);
      snprintf(info, len, "%s, sm_%d%d, %d SMs, %.1f GiB, L2 %d MB, driver %d, runtime %d", p.name, p.major, p.minor,
               p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, p.l2CacheSize >> 20, drv, rt);
    }
    return n;
  });
}

void *dw_create(const dw_config *cfg) {
  Model *M = nullptr;
  int ok = guarded([&]() -> int {
    if (!cfg) dw_fail("null config");
    const dw_config &c = *cfg;
    auto need = [](bool b, const char *what) {
      if (!b) dw_fail(std::string("bad config: ") + what);
    };
    need(c.vocab > 0 && c.hidden > 0 && c.layers > 0 && c.heads > 0, "vocab, hidden, layers and heads must be positive");
    need(c.kv_lora_rank > 0 && c.nope >= 0 && c.rope > 0 && c.rope % 2 == 0 && c.v_dim > 0, "attention dimensions");
    need(c.kv_lora_rank + c.rope <= 640, "kv_lora_rank + qk_rope_head_dim must be at most 640");
    need(c.max_context > 0, "max_context must be positive");
    need(c.n_routed == 0 || (c.topk > 0 && c.topk <= 32 && c.topk <= c.n_routed && c.n_routed <= 4096),
         "num_experts_per_tok must be 1..32 and at most n_routed_experts");
    need(c.n_routed == 0 || (c.n_group > 0 && c.n_routed % c.n_group == 0), "n_routed_experts divisible by n_group");
    M = new Model();
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
    M->L.resize(c.layers);
    for (int l = 0; l < c.layers; l++) M->L[l].moe = is_moe(c, l);
    M->nsplit = std::max(1, std::min(32, 2 * M->nsm / c.heads));
    {
      // DW_NSPLIT: attention splits of a decode step (1..32; default 2 x SMs / heads, at most 32)
      const char *e = getenv("DW_NSPLIT");
      const int v = e && *e ? atoi(e) : 0;
      if (v >= 1 && v <= 32) M->nsplit = v;
    }
    {
      // DW_MEGA=1: every layer of a decode step in one launch (mega.cu; slower than the per-kernel
      // schedule on the H200, see bench/RESULTS-gpu.md). Read per model, so that a test can compare.
      const char *e = getenv("DW_MEGA");
      M->mega = e && *e == '1' && mega_supported(*M, nullptr);
      const char *f = getenv("DW_MEGA_PREFETCH");
      M->mega_prefetch = f && *f == '1';
      auto knob = [](const char *name, int def, int lo, int hi) {
        const char *v = getenv(name);
        if (!v || !*v) return def;
        const int x = atoi(v);
        return x < lo || x > hi ? def : x;
      };
      M->mega_nsplit = knob("DW_MEGA_NSPLIT", 0, 1, 32);
      M->mega_rpw = knob("DW_MEGA_RPW", 2, 1, 16);
      M->mega_gu_rpw = knob("DW_MEGA_GU_RPW", 2, 1, 16);
      M->mega_uv_rpw = knob("DW_MEGA_UV_RPW", 2, 1, 16);
      M->mega_minb = knob("DW_MEGA_MINB", 3, 2, 3);
      M->mega_evict = knob("DW_MEGA_EVICT", 0, 0, 1);
    }
    return 0;
  });
  if (ok < 0) {
    delete M;
    return nullptr;
  }
  return M;
}

int dw_load(void *m, int32_t layer, int32_t slot, int32_t expert, int32_t dtype, const void *data, int64_t rows,
            int64_t cols, int64_t row_offset, const float *scales, int32_t block_rows, int32_t block_cols) {
  return guarded([&]() -> int {
    Model &M = *as_model(m);
    if (M.finalized) dw_fail("dw_load after dw_finalize");
    if (!data) dw_fail("null data");
    Target t = target(M, layer, slot);
    const std::string name = slot_name(layer, slot);
    if (t.v) {
      if (dtype != DW_F32) dw_fail(name + ": vectors are loaded as f32");
      if (rows * cols != t.s.rows) dw_fail(name + ": expected " + std::to_string(t.s.rows) + " values");
      if (!*t.v) *t.v = M.alloc<float>(t.s.rows);
      CK(cudaMemcpyAsync(*t.v, data, sizeof(float) * t.s.rows, cudaMemcpyHostToDevice, M.st));
      CK(cudaStreamSynchronize(M.st));
      return 0;
    }
    if (cols != t.s.cols) dw_fail(name + ": expected " + std::to_string(t.s.cols) + " columns, got " + std::to_string(cols));
    if (row_offset < 0 || rows <= 0 || row_offset + rows > t.s.rows)
      dw_fail(name + ": rows [" + std::to_string(row_offset) + ", " + std::to_string(row_offset + rows) +
              ") outside [0, " + std::to_string(t.s.rows) + ")");
    if (expert < 0 || expert >= t.s.experts) dw_fail(name + ": expert " + std::to_string(expert) + " out of range");
    if (dtype < DW_F32 || dtype > DW_FP8) dw_fail(name + ": unsupported dtype " + std::to_string(dtype));
    if (dtype == DW_FP8 && (!scales || block_rows <= 0 || block_cols <= 0)) dw_fail(name + ": FP8 data needs block scales");
    DMat &W = *t.m;
    if (!W.ok()) {
      int fmt = dtype == DW_F16 ? F_F32 : dtype;
      int sblk = 64;
      if (M.c.quant == 1) fmt = F_Q8;
      else if (fmt == F_FP8) {
        if (block_cols % 8 != 0) fmt = F_F32;  // the vector loads need whole 8-column groups per scale
        sblk = block_cols;
      }
      alloc_mat(M, W, t.s, fmt, sblk);
    }
    const size_t bytes = (size_t)rows * cols * fmt_size(dtype);
    const size_t off = (bytes + 255) / 256 * 256;
    size_t sbytes = 0;
    if (dtype == DW_FP8) sbytes = (size_t)ceil_div((int)rows, block_rows) * ceil_div((int)cols, block_cols) * 4;
    char *st = static_cast<char *>(staging(M, off + sbytes));
    CK(cudaMemcpyAsync(st, data, bytes, cudaMemcpyHostToDevice, M.st));
    float *sdev = nullptr;
    if (sbytes) {
      sdev = reinterpret_cast<float *>(st + off);
      CK(cudaMemcpyAsync(sdev, scales, sbytes, cudaMemcpyHostToDevice, M.st));
    }
    launch_convert(M.st, W, expert, row_offset, dtype, st, rows, cols, sdev, block_rows, block_cols);
    CK(cudaStreamSynchronize(M.st));
    W.loaded += rows;
    return 0;
  });
}

int dw_fill_random(void *m, uint64_t seed) {
  return guarded([&]() -> int {
    Model &M = *as_model(m);
    if (M.finalized) dw_fail("dw_fill_random after dw_finalize");
    auto fill_mat = [&](DMat &W, const Shape &s, uint64_t id) {
      if (W.ok()) return;
      alloc_mat(M, W, s, F_BF16, 64);
      launch_random(M.st, W, seed * 0x100000001b3ull + id * 0x9e3779b97f4a7c15ull);
      W.loaded = s.rows * s.experts;
    };
    for (int l = 0; l < M.c.layers; l++) {
      for (int slot = 0; slot < DW_LAYER_SLOTS; slot++) {
        Shape s = layer_shape(M, l, slot);
        if (s.rows == 0) continue;
        if (s.vec) {
          if (slot == DW_ROUTER_BIAS || M.L[l].v[slot]) continue;
          M.L[l].v[slot] = M.alloc<float>(s.rows, false);
          launch_fill(M.st, M.L[l].v[slot], s.rows, 1.f);
        } else {
          fill_mat(M.L[l].m[slot], s, (uint64_t)l * 64 + slot);
        }
      }
    }
    Shape es;
    es.rows = M.c.vocab;
    es.cols = M.c.hidden;
    fill_mat(M.embed, es, 100000);
    fill_mat(M.head, es, 100001);
    if (!M.final_norm) {
      M.final_norm = M.alloc<float>(M.c.hidden, false);
      launch_fill(M.st, M.final_norm, M.c.hidden, 1.f);
    }
    CK(cudaStreamSynchronize(M.st));
    return 0;
  });
}

int dw_finalize(void *m) {
  return guarded([&]() -> int {
    Model &M = *as_model(m);
    if (M.finalized) return 0;
    const dw_config &c = M.c;
    // Every weight present and complete.
    auto check_mat = [&](const DMat &W, const Shape &s, const std::string &name) {
      if (!W.ok()) dw_fail(name + " was never loaded");
      if (W.loaded != s.rows * s.experts)
        dw_fail(name + ": " + std::to_string(W.loaded) + " of " + std::to_string(s.rows * s.experts) + " rows loaded");
    };
    int64_t deq = 0;
    for (int l = 0; l < c.layers; l++) {
      Layer &ly = M.L[l];
      for (int slot = 0; slot < DW_LAYER_SLOTS; slot++) {
        Shape s = layer_shape(M, l, slot);
        if (s.rows == 0 || !s.required) continue;
        if (s.vec) {
          if (!ly.v[slot]) dw_fail(slot_name(l, slot) + " was never loaded");
        } else {
          check_mat(ly.m[slot], s, slot_name(l, slot));
          const DMat &W = ly.m[slot];
          if (W.fmt != F_F32 && W.fmt != F_BF16) deq = std::max<int64_t>(deq, (int64_t)W.experts * W.rows * W.ld);
        }
      }
      auto same = [&](int a, int b) {
        if (ly.m[a].ok() && ly.m[b].ok() && ly.m[a].fmt != ly.m[b].fmt)
          dw_fail("layer " + std::to_string(l) + ": " + slot_name(l, a) + " is " + fmt_name(ly.m[a].fmt) + " but " +
                  slot_name(l, b) + " is " + fmt_name(ly.m[b].fmt) + "; load them in one format");
      };
      if (ly.moe) {
        same(DW_EXP_GATE_UP, DW_EXP_DOWN);
        same(DW_EXP_GATE_UP, DW_SH_GATE_UP);
        same(DW_EXP_GATE_UP, DW_SH_DOWN);
      } else {
        same(DW_GATE_UP, DW_DOWN);
      }
    }
    Shape es;
    es.rows = c.vocab;
    es.cols = c.hidden;
    check_mat(M.embed, es, "embed_tokens");
    check_mat(M.head, es, "lm_head");
    if (M.head.fmt != F_F32 && M.head.fmt != F_BF16) deq = std::max<int64_t>(deq, (int64_t)M.head.rows * M.head.ld);
    if (!M.final_norm) dw_fail("norm was never loaded");
    if (!M.rope_cos || !M.rope_sin) dw_fail("the rope tables were never loaded");

    // KV cache and buffers.
    const int P = M.P, H = c.hidden, E = std::max(c.n_routed, 1), k = std::max(c.topk, 1);
    const int I = c.moe_inter, S = c.moe_inter * c.n_shared;
    const int maxI = std::max({c.inter, S, I, 1});
    for (auto &ly : M.L) ly.cache = M.alloc<float>((int64_t)c.max_context * M.latent);
    M.x = M.alloc<float>((int64_t)P * H);
    M.h = M.alloc<float>((int64_t)P * H);
    M.q = M.alloc<float>((int64_t)P * c.heads * M.qdim);
    M.qa = M.alloc<float>((int64_t)P * std::max(c.q_lora_rank, 1));
    M.kv = M.alloc<float>((int64_t)P * M.latent);
    M.qabs = M.alloc<float>((int64_t)P * c.heads * M.latent);
    M.part = M.alloc<float>((int64_t)P * c.heads * (c.kv_lora_rank + 2));
    M.attn = M.alloc<float>((int64_t)P * c.heads * c.v_dim);
    M.gu = M.alloc<float>((int64_t)P * 2 * maxI);
    M.act = M.alloc<float>((int64_t)P * maxI);
    M.sout = M.alloc<float>((int64_t)P * H);
    M.logits = M.alloc<float>((int64_t)P * c.vocab);
    M.ids = M.alloc<int>(P);
    if (c.n_routed > 0) {
      M.rlog = M.alloc<float>((int64_t)P * E);
      M.rw = M.alloc<float>((int64_t)P * k);
      M.chosen = M.alloc<int>((int64_t)P * k);
      M.slot = M.alloc<int>((int64_t)P * k);
      M.counts = M.alloc<int>(E);
      M.list = M.alloc<int>((int64_t)E * P);
      M.xd = M.alloc<float>((int64_t)E * P * H);
      M.gud = M.alloc<float>((int64_t)E * P * 2 * I);
      M.ad = M.alloc<float>((int64_t)E * P * I);
      M.yd = M.alloc<float>((int64_t)E * P * H);
    }
    int64_t maxK = std::max({H, c.q_lora_rank, c.heads * c.v_dim, c.inter, S, 1});
    M.split_cap = std::max<int64_t>((int64_t)P * maxK, c.n_routed > 0 ? (int64_t)E * P * std::max(H, I) : 0);
    M.hi = M.alloc<__nv_bfloat16>(M.split_cap);
    M.lo = M.alloc<__nv_bfloat16>(M.split_cap);
    if (deq > 0) {
      M.deq_cap = deq;
      M.deq = M.alloc<float>(deq);
    }
    // decode buffers, zero-padded to multiples of 8
    M.dx = M.alloc<float>(round_up(H, 8));
    M.dh = M.alloc<float>(round_up(H, 8));
    M.dq = M.alloc<float>(round_up(c.heads * M.qdim, 8));
    M.dqa = M.alloc<float>(round_up(std::max(c.q_lora_rank, 1), 8));
    M.dkv = M.alloc<float>(round_up(M.latent, 8));
    M.dqabs = M.alloc<float>((int64_t)c.heads * M.latent);
    M.dpart = M.alloc<float>((int64_t)c.heads * M.nsplit * (c.kv_lora_rank + 2));
    M.dattn = M.alloc<float>(round_up(c.heads * c.v_dim, 8));
    M.dact = M.alloc<float>((int64_t)k * round_up(I, 8) + round_up(maxI, 8));
    M.drlog = M.alloc<float>(E);
    M.dw = M.alloc<float>(k);
    M.dchosen = M.alloc<int>(k);
    M.dlogits = M.alloc<float>(c.vocab);
    M.topk_scratch = M.alloc<float>(c.vocab);
    M.tk_vals = M.alloc<float>(256);
    M.tk_ids = M.alloc<int>(256);
    M.counter = M.alloc<unsigned>(1);
    M.amax.v = M.alloc<float>(256);
    M.amax.i = M.alloc<int>(256);
    M.amax.counter = M.alloc<unsigned>(1);
    M.log = M.alloc<int>(c.max_context + 1);
    M.state = M.alloc<DState>(1);
    DState s0{0, 0, 0, c.max_context + 1, M.log};
    CK(cudaMemcpyAsync(M.state, &s0, sizeof s0, cudaMemcpyHostToDevice, M.st));
    CK(cudaStreamSynchronize(M.st));
    if (M.stage) {
      CK(cudaFree(M.stage));
      M.stage = nullptr;
      M.stage_cap = 0;
    }
    M.blas = blas_open(M.st);
    M.finalized = true;
    return 0;
  });
}

int dw_prefill(void *m, const int32_t *ids, int32_t n, float *logits, int32_t all_rows) {
  return guarded([&]() -> int {
    Model &M = *as_model(m);
    require_finalized(M);
    if (n <= 0) dw_fail("no tokens to run");
    if (M.pos + n > M.c.max_context)
      dw_fail(std::to_string(M.pos + n) + " tokens exceed the context length " + std::to_string(M.c.max_context));
    for (int i = 0; i < n; i++)
      if (ids[i] < 0 || ids[i] >= M.c.vocab) dw_fail("token id " + std::to_string(ids[i]) + " outside the vocabulary");
    for (int done = 0; done < n; done += M.P) {
      const int T = std::min(M.P, n - done);
      const bool last = done + T == n;
      float *out = nullptr;
      if (logits && all_rows) out = logits + (int64_t)done * M.c.vocab;
      else if (logits && last) out = logits;
      prefill_chunk(M, ids + done, T, M.pos, all_rows != 0, out);
      // The ids and logits of this chunk must be consumed before the next chunk reuses the buffers.
      CK(cudaStreamSynchronize(M.st));
      M.pos += T;
    }
    return read_token(M);
  });
}

int dw_decode(void *m, int32_t token, float *logits) {
  return guarded([&]() -> int {
    Model &M = *as_model(m);
    require_finalized(M);
    if (token < 0 || token >= M.c.vocab) dw_fail("token id " + std::to_string(token) + " outside the vocabulary");
    if (M.pos + 1 > M.c.max_context) dw_fail("the context is full (" + std::to_string(M.c.max_context) + " tokens)");
    launch_set_state(M.st, M.state, token, M.pos);
    if (!M.graph) {
      ensure_graph(M);
      launch_set_state(M.st, M.state, token, M.pos);
    }
    CK(cudaGraphLaunch(M.graph, M.st));
    M.last_logits = M.dlogits;
    if (logits) CK(cudaMemcpyAsync(logits, M.dlogits, sizeof(float) * M.c.vocab, cudaMemcpyDeviceToHost, M.st));
    const int next = read_token(M);
    M.pos += 1;
    return next;
  });
}

int dw_generate(void *m, int32_t token, int32_t n, int32_t *out_ids) {
  return guarded([&]() -> int {
    Model &M = *as_model(m);
    require_finalized(M);
    if (n <= 0) return 0;
    if (token < 0 || token >= M.c.vocab) dw_fail("token id " + std::to_string(token) + " outside the vocabulary");
    if (M.pos + n > M.c.max_context) dw_fail("generating " + std::to_string(n) + " tokens would overflow the context");
    launch_set_state(M.st, M.state, token, M.pos);
    if (!M.graph) {
      ensure_graph(M);
      launch_set_state(M.st, M.state, token, M.pos);
    }
    for (int i = 0; i < n; i++) CK(cudaGraphLaunch(M.graph, M.st));
    CK(cudaMemcpyAsync(out_ids, M.log, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, M.st));
    read_token(M);  // synchronises; fails if the one-launch decode reported a timed-out wait
    M.pos += n;
    M.last_logits = M.dlogits;
    return 0;
  });
}

int dw_profile_decode(void *m, int32_t token, char *out, int32_t len) {
  return guarded([&]() -> int {
    Model &M = *as_model(m);
    require_finalized(M);
    if (token < 0 || token >= M.c.vocab) dw_fail("token id outside the vocabulary");
    if (M.pos + 1 > M.c.max_context) dw_fail("the context is full");
    std::vector<Model::Mark> marks;
    M.pdl = pdl_enabled();
    ensure_mega(M);
    launch_set_state(M.st, M.state, token, M.pos);
    decode_step(M);  // warm: kernel attributes, caches
    launch_set_state(M.st, M.state, token, M.pos);
    // Hold the GPU for 20 ms so that the whole step is queued before it starts: the events then
    // time the kernels, not the host's launches.
    launch_spin(M.st, 20000000ull);
    M.prof = &marks;
    try {
      decode_step(M);
    } catch (...) {
      M.prof = nullptr;
      throw;
    }
    M.prof = nullptr;
    CK(cudaStreamSynchronize(M.st));
    read_token(M);  // the one-launch decode's error report, if any
    std::vector<std::string> names;
    std::vector<double> ms, bytes;
    std::vector<int> count;
    double total = 0;
    for (size_t i = 0; i + 1 < marks.size(); i++) {
      float t = 0;
      CK(cudaEventElapsedTime(&t, marks[i].ev, marks[i + 1].ev));
      total += t;
      size_t k = 0;
      while (k < names.size() && names[k] != marks[i].name) k++;
      if (k == names.size()) {
        names.push_back(marks[i].name);
        ms.push_back(0);
        bytes.push_back(0);
        count.push_back(0);
      }
      ms[k] += t;
      bytes[k] += (double)marks[i].bytes;
      count[k]++;
    }
    for (auto &mk : marks) cudaEventDestroy(mk.ev);
    std::string s;
    char line[256];
    for (size_t k = 0; k < names.size(); k++) {
      snprintf(line, sizeof line, "%-28s %4d x  %8.3f ms  %7.1f MB  %7.0f GB/s\n", names[k].c_str(), count[k], ms[k],
               bytes[k] / 1e6, ms[k] > 0 ? bytes[k] / (ms[k] * 1e-3) / 1e9 : 0.0);
      s += line;
    }
    snprintf(line, sizeof line, "%-28s        %8.3f ms\n", "total (events)", total);
    s += line;
    if (M.mega) s += mega_profile(M);
    if (out && len > 0) snprintf(out, len, "%s", s.c_str());
    return 0;
  });
}

int dw_topk(void *m, int32_t k, float *values, int32_t *ids) {
  return guarded([&]() -> int {
    Model &M = *as_model(m);
    require_finalized(M);
    if (!M.last_logits) dw_fail("no logits yet");
    if (k <= 0 || k > 256 || k > M.c.vocab) dw_fail("k must be 1..256");
    launch_topk(M.st, M.last_logits, M.c.vocab, k, M.topk_scratch, M.tk_vals, M.tk_ids);
    CK(cudaMemcpyAsync(values, M.tk_vals, sizeof(float) * k, cudaMemcpyDeviceToHost, M.st));
    CK(cudaMemcpyAsync(ids, M.tk_ids, sizeof(int32_t) * k, cudaMemcpyDeviceToHost, M.st));
    CK(cudaStreamSynchronize(M.st));
    return 0;
  });
}

int dw_reset(void *m) {
  return guarded([&]() -> int {
    as_model(m)->pos = 0;
    return 0;
  });
}

int32_t dw_position(void *m) { return m ? static_cast<Model *>(m)->pos : -1; }

static int64_t mat_bytes(const DMat &W) {
  if (!W.ok()) return 0;
  return W.estride * W.experts + (W.s ? W.sestride * W.experts * 4 : 0);
}
static int64_t mat_bytes_one(const DMat &W) {
  if (!W.ok()) return 0;
  return W.estride + (W.s ? W.sestride * 4 : 0);
}

int64_t dw_weight_bytes(void *m) {
  if (!m) return -1;
  Model &M = *static_cast<Model *>(m);
  int64_t b = mat_bytes(M.embed) + mat_bytes(M.head);
  for (auto &ly : M.L)
    for (auto &W : ly.m) b += mat_bytes(W);
  return b;
}

int64_t dw_active_bytes(void *m) {
  if (!m) return -1;
  Model &M = *static_cast<Model *>(m);
  int64_t b = mat_bytes(M.head) + (M.embed.ok() ? M.embed.ldb() : 0);
  for (auto &ly : M.L)
    for (int s = 0; s < DW_LAYER_SLOTS; s++) {
      if (s == DW_EXP_GATE_UP || s == DW_EXP_DOWN) b += mat_bytes_one(ly.m[s]) * M.c.topk;
      else b += mat_bytes(ly.m[s]);
    }
  return b;
}

void dw_free(void *m) {
  if (!m) return;
  Model *M = static_cast<Model *>(m);
  if (M->st) cudaStreamSynchronize(M->st);
  if (M->graph) cudaGraphExecDestroy(M->graph);
  blas_close(M->blas);
  for (void *p : M->allocs) cudaFree(p);
  if (M->stage) cudaFree(M->stage);
  if (M->st) cudaStreamDestroy(M->st);
  delete M;
}

double dw_bandwidth_probe(int64_t bytes, int32_t iters) {
  double result = -1;
  guarded([&]() -> int {
    void *a = nullptr, *b = nullptr;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaMemset(a, 1, bytes));
    CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    std::vector<float> ms;
    for (int i = 0; i < iters; i++) {
      CK(cudaEventRecord(e0));
      CK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice));
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float t = 0;
      CK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    result = 2.0 * bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return 0;
  });
  return result;
}

}  // extern "C"
