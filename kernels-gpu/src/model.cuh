// The model on the device: its weights by role, the KV-cache pool, the buffers of both schedules
// and the decode graph. model.cu makes and frees it, load.cu fills its weights, prefill.cu and
// decode.cu run it, api.cu is the C ABI over all of them.
#pragma once
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>
#include "ops.cuh"

// The per-layer roles the library holds (dw_constants.h numbers them): a decoder block's, then the MTP
// layer's own (DW_ROLE_MTP_*, only in layer c.layers); the wasm-only roles after them are not loaded here.
constexpr int LAYER_SLOTS = DW_ROLE_MTP_EMBED + 1;

struct Layer {
  DMat m[LAYER_SLOTS];
  float *v[LAYER_SLOTS] = {};
  bool moe = false;
  float *cache = nullptr;  // [max_sequences][max_context][latent]
};

// The shape a role must have in a layer, from the config (rows 0: not part of this model).
struct Shape {
  int64_t rows = 0, cols = 0;
  int experts = 1;
  bool vec = false, required = false;
};

struct Model {
  dw_config c{};
  int qdim = 0, latent = 0, nsm = 0;
  int P = 0;       // tokens per prefill chunk
  int nsplit = 1;  // attention splits of a decode step
  std::vector<Layer> L;  // the decoder layers, then the MTP layer when c.nextn is 1
  DMat embed, head;
  float *final_norm = nullptr, *rope_cos = nullptr, *rope_sin = nullptr;
  cudaStream_t st = nullptr;
  std::vector<void *> allocs;
  bool finalized = false;
  Blas *blas = nullptr;
  cudaGraphExec_t graph = nullptr;
  bool pdl = false;  // the captured decode graphs use programmatic dependent launch (dw_config.pdl, off if the driver refuses)

  // prefill buffers (P rows)
  float *x = nullptr, *h = nullptr, *q = nullptr, *qa = nullptr, *kv = nullptr, *qabs = nullptr, *part = nullptr,
        *attn = nullptr, *gu = nullptr, *act = nullptr, *rlog = nullptr, *rw = nullptr, *xd = nullptr, *gud = nullptr,
        *ad = nullptr, *yd = nullptr, *sout = nullptr, *logits = nullptr, *deq = nullptr;
  float *mtp_in = nullptr;  // the MTP layer's [enorm(embed(t)); hnorm(h)] (P rows of 2 x hidden)
  int *ids = nullptr, *chosen = nullptr, *counts = nullptr, *list = nullptr, *slot = nullptr;
  __nv_bfloat16 *hi = nullptr, *lo = nullptr;
  int64_t split_cap = 0, deq_cap = 0;
  // decode buffers (one token), zero-padded to multiples of 8
  float *dx = nullptr, *dh = nullptr, *dq = nullptr, *dqa = nullptr, *dkv = nullptr, *dqabs = nullptr, *dpart = nullptr,
        *dattn = nullptr, *dact = nullptr, *drlog = nullptr, *dw = nullptr, *dlogits = nullptr;
  int *dchosen = nullptr, *log = nullptr;
  unsigned *counter = nullptr;
  ArgmaxScratch amax{};
  DState *state = nullptr;
  float *host_logits = nullptr;  // pinned: a decode step's logits come back by DMA, then to the caller
  // batched decode (decode_batch.cu): batch_max tokens, each row zero-padded to a multiple of 8
  int batch_max = 0;
  float *bx = nullptr, *bh = nullptr, *bq = nullptr, *bqa = nullptr, *bkv = nullptr, *bqabs = nullptr, *bpart = nullptr,
        *battn = nullptr, *bact = nullptr, *brlog = nullptr, *bw = nullptr, *blogits = nullptr;
  int *bchosen = nullptr;
  Units *units = nullptr;
  BState *bstate = nullptr;
  BState *host_bstate = nullptr;  // pinned: the step's inputs go up and its argmaxes come back through it
  float *host_blogits = nullptr;  // pinned: [batch_max][vocab]
  cudaGraphExec_t bgraph[BATCH_MAX + 1] = {};  // one per batch size used
  // top-k of the most recent logits row
  float *topk_scratch = nullptr, *tk_vals = nullptr;
  int *tk_ids = nullptr;
  const float *last_logits = nullptr;
  // staging of loads and random weights (freed at finalize)
  void *stage = nullptr;
  size_t stage_cap = 0;
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
};

// model.cu
Model *new_model(const dw_config &c);
void free_model(Model *M);
bool is_moe(const dw_config &c, int l);
Shape layer_shape(const Model &M, int l, int role);
Shape global_shape(const Model &M, int role);
// "role 7 (layer 3)": libraries name roles by number; the host adds the checkpoint's tensor names.
std::string role_name(int layer, int role);
// The shape of a role of a layer, or of a global role (layer -1); rows 0 when the model has none.
Shape shape_of(const Model &M, int layer, int role);
// The matrix of a role (null for a vector role), or the pointer slot of a vector role (null for a
// matrix); both fail for a role this model does not have.
DMat *matrix_of(Model &M, int layer, int role);
float **vector_of(Model &M, int layer, int role);
int64_t matrix_bytes(int fmt, int64_t rows, int64_t cols, int experts);
void alloc_matrix(Model &M, DMat &m, const Shape &s, int sblk);
// Bytes of every matrix (declared format), vector and rope table; of the pool; of the buffers.
int64_t planned_weight_bytes(const Model &M);
int64_t kv_cache_bytes(const Model &M);
int64_t scratch_bytes(Model &M);  // sets the buffers' capacities; allocates nothing
void finalize_model(Model &M);
void *staging(Model &M, size_t bytes);
constexpr size_t STAGE_BYTES = 64u << 20;  // loads and random weights go through this much at a time
int64_t bytes_of(const DMat &W, int experts = -1);

// The arguments of the routing and attention kernels for a layer (decode: one token, M.nsplit splits).
RouteArgs route_args(const Model &M, const Layer &ly);
MlaParams mla_params(const Model &M, const Layer &ly, int tokens, bool decode);

// load.cu
void load_tensor(Model &M, int layer, int role, int expert, int dtype, const void *data, int64_t rows, int64_t cols,
                 int64_t row_offset, const float *scales, int block_rows, int block_cols);
void fill_random(Model &M, uint64_t seed);

// prefill.cu: T tokens of sequence seq from position pos0; logits_host (if not null) receives [rows, vocab],
// hidden_host (if not null) [T, hidden] after the final norm.
void prefill_chunk(Model &M, int seq, const int32_t *ids_host, int T, int pos0, bool all_rows, float *logits_host,
                   float *hidden_host);
// One decoder layer over the chunk's T rows of M.x (their sequence and first position in M.state).
void prefill_layer(Model &M, const Layer &ly, int T);
// Y[b][M, rows] (ldy) (+)= X[b][M, cols] (ldx) . W[b]^T for the matrices of experts [e0, e0 + batch): cuBLAS.
void gemm(Model &M, const DMat &W, int e0, int batch, const float *X, int ldx, int64_t strideX, float *Y, int ldy,
          int64_t strideY, int tokens, float beta);
// The final norm of n rows of x (ld apart) into out (hidden apart), then copied to hidden_host: forward's hidden.
void hidden_rows(Model &M, float *out, const float *x, int ld, int n, float *hidden_host);

// mtp.cu: T positions of the MTP layer from pos0 of sequence seq's MTP cache; with hidden_out (the last
// chunk) the last position's output state and its logits [vocab] come back.
void mtp_chunk(Model &M, int seq, const int32_t *ids_host, int T, int pos0, const float *hidden_in, float *hidden_out,
               float *logits_host);

// decode.cu: the step as kernels (captured once into M.graph), its replay, and its profile.
void decode_step(Model &M);
void ensure_graph(Model &M);
// Captures step() into graph unless it is already there (runs it once uncaptured first).
void ensure_captured(Model &M, cudaGraphExec_t &graph, const std::function<void()> &step);
// Several matrices over one input x, one launch per format: n = 0 one token, else n tokens xld apart
// (y rows yld apart) through the batched gemv.
struct GemvOut {
  const DMat *W;
  float *y;
  bool add;
  int yld;
};
void gemv_multi(Model &M, const float *x, const float *norm, int cols, std::initializer_list<GemvOut> outs, int n = 0,
                int xld = 0);
// The feed-forward of a layer for one token: the chosen experts (moe) and the fixed MLP, shared or dense.
MoeParams moe_params(const Model &M, const Layer &ly);

// Launches inside use programmatic dependent launch while launch_flags().pdl is on; off on exit.
struct PdlScope {
  PdlScope() { launch_flags().pdl = false; }
  ~PdlScope() { launch_flags().pdl = false; }
};

// decode_batch.cu: n tokens of n sequences (the inputs in M.bstate), captured per n into M.bgraph[n].
int batch_max(const Model &M);
void decode_batch_step(Model &M, int n);
// The last batched step's n hidden states after the final norm (M.bh is the step's scratch) to hidden_host.
void batch_hidden(Model &M, int n, float *hidden_host);
std::string profile_decode(Model &M, int seq, int pos, int token);
// Runs arm(), step() (warm), arm(), then step() with events between its marks: the table of stages.
std::string profile_step(Model &M, const std::function<void()> &arm, const std::function<void()> &step);
// Profiling: the time from this mark to the next is charged to its name (a no-op unless profiling).
void mark(Model &M, const char *name, int64_t bytes);

// The argmax the last run left in the state.
int read_token(Model &M);
