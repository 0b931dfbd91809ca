// The C ABI (include/dw_cuda.h): argument checks, then the model's own functions. A failure inside
// becomes a negative return and dw_last_error().
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include "model.cuh"

static_assert(sizeof(dw_config) == 132, "dw_config is 29 int32 then 4 float: host/backends/cuda/ffi.ts's CONFIG_BYTES");

namespace {

thread_local std::string g_error;

// For the length of one call: the model's launch flags (dw_config.sync_launches).
struct LaunchScope {
  explicit LaunchScope(const Model &M) { launch_flags() = LaunchFlags{false, M.c.sync_launches != 0}; }
  ~LaunchScope() { launch_flags() = LaunchFlags{}; }
};

template <typename Fn>
int guarded(Fn &&fn) {
  try {
    g_error.clear();
    return fn();
  } catch (const std::exception &e) {
    g_error = e.what();
    return -1;
  }
}

Model &as_model(void *m) {
  if (!m) dw_fail("null model handle");
  return *static_cast<Model *>(m);
}

Model &finalized(void *m) {
  Model &M = as_model(m);
  if (!M.finalized) dw_fail("dw_finalize has not been called");
  return M;
}

void check_token(const Model &M, int token) {
  if (token < 0 || token >= M.c.vocab)
    dw_fail("token id " + std::to_string(token) + " outside the vocabulary (0 to " + std::to_string(M.c.vocab - 1) + ")");
}

// Sequence seq may take n more tokens from position pos.
void check_run(const Model &M, int seq, int pos, int64_t n) {
  if (seq < 0 || seq >= M.c.max_sequences)
    dw_fail("sequence " + std::to_string(seq) + " outside the pool (0 to " + std::to_string(M.c.max_sequences - 1) + ")");
  if (pos < 0) dw_fail("negative position " + std::to_string(pos));
  if (n <= 0) dw_fail("no tokens to run");
  if (pos + n > M.c.max_context)
    dw_fail("positions " + std::to_string(pos) + " to " + std::to_string(pos + n - 1) + " exceed the context length " +
            std::to_string(M.c.max_context));
}

// Checks a batched step's inputs and copies them to the device (through the pinned M.host_bstate).
void arm_batch(Model &M, int n, const int32_t *seqs, const int32_t *pos, const int32_t *tokens) {
  if (n < 1 || n > M.batch_max)
    dw_fail("a batched decode step of " + std::to_string(n) + " tokens: expected 1 to " + std::to_string(M.batch_max) +
            " (dw_decode_batch_max)");
  BState &h = *M.host_bstate;
  CK(cudaStreamSynchronize(M.st));  // the pinned inputs of the last step are no longer read
  for (int i = 0; i < n; i++) {
    check_run(M, seqs[i], pos[i], 1);
    check_token(M, tokens[i]);
    for (int j = 0; j < i; j++)
      if (seqs[j] == seqs[i] && pos[j] == pos[i])
        dw_fail("position " + std::to_string(pos[i]) + " of sequence " + std::to_string(seqs[i]) +
                " appears twice in one batched decode step");
    h.seq[i] = seqs[i];
    h.pos[i] = pos[i];
    h.token[i] = tokens[i];
  }
  h.experts = 0;
  CK(cudaMemcpyAsync(M.bstate, &h, sizeof h, cudaMemcpyHostToDevice, M.st));
}

// Puts (seq, pos, token) in the state the decode graph reads, capturing the graph at the first step.
void arm_decode(Model &M, int seq, int pos, int token) {
  launch_set_state(M.st, M.state, seq, pos, token);
  if (!M.graph) {
    ensure_graph(M);
    launch_set_state(M.st, M.state, seq, pos, token);
  }
}

int64_t mat_bytes_one(const DMat &W) { return W.ok() ? W.estride + (W.s ? W.sestride * 4 : 0) : 0; }

}  // namespace

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
      CK(cudaRuntimeGetVersion(&rt));
      CK(cudaDriverGetVersion(&drv));
      snprintf(info, len, "%s, sm_%d%d, %d SMs, %.1f GiB, L2 %d MB, driver %d, runtime %d", p.name, p.major, p.minor,
               p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, p.l2CacheSize >> 20, drv, rt);
    }
    return n;
  });
}

int dw_device_memory(int64_t *free_bytes, int64_t *total_bytes) {
  return guarded([&]() -> int {
    size_t f = 0, t = 0;
    CK(cudaMemGetInfo(&f, &t));
    if (free_bytes) *free_bytes = (int64_t)f;
    if (total_bytes) *total_bytes = (int64_t)t;
    return 0;
  });
}

void *dw_create(const dw_config *cfg) {
  Model *M = nullptr;
  guarded([&]() -> int {
    if (!cfg) dw_fail("null config");
    M = new_model(*cfg);
    return 0;
  });
  return M;
}

int dw_declare(void *m, int32_t layer, int32_t role, int32_t fmt) {
  return guarded([&]() -> int {
    Model &M = as_model(m);
    if (M.finalized) dw_fail("dw_declare after dw_finalize");
    DMat *W = matrix_of(M, layer, role);
    if (!W) dw_fail(role_name(layer, role) + " is a vector: vectors are always f32");
    if (!fmt_on_device(fmt))
      dw_fail(role_name(layer, role) + ": format " + std::to_string(fmt) + " is not one the device runs (f32, bf16, q8, fp8)");
    if (W->ok() && W->fmt != fmt) dw_fail(role_name(layer, role) + " is already loaded as " + fmt_name(W->fmt));
    W->fmt = fmt;
    return 0;
  });
}

int dw_memory_plan(void *m, int64_t *weights, int64_t *kv_cache, int64_t *scratch) {
  return guarded([&]() -> int {
    Model &M = as_model(m);
    if (weights) *weights = planned_weight_bytes(M);
    if (kv_cache) *kv_cache = kv_cache_bytes(M);
    if (scratch) *scratch = scratch_bytes(M);
    return 0;
  });
}

int dw_load(void *m, int32_t layer, int32_t role, int32_t expert, int32_t dtype, const void *data, int64_t rows,
            int64_t cols, int64_t row_offset, const float *scales, int32_t block_rows, int32_t block_cols) {
  return guarded([&]() -> int {
    Model &M = as_model(m);
    LaunchScope scope(M);
    load_tensor(M, layer, role, expert, dtype, data, rows, cols, row_offset, scales, block_rows, block_cols);
    return 0;
  });
}

int dw_fill_random(void *m, uint64_t seed) {
  return guarded([&]() -> int {
    Model &M = as_model(m);
    LaunchScope scope(M);
    fill_random(M, seed);
    return 0;
  });
}

int dw_finalize(void *m) {
  return guarded([&]() -> int {
    Model &M = as_model(m);
    if (M.finalized) return 0;
    finalize_model(M);
    return 0;
  });
}

int dw_prefill(void *m, int32_t seq, int32_t pos, const int32_t *ids, int32_t n, float *logits, int32_t all_rows,
               float *hidden) {
  return guarded([&]() -> int {
    Model &M = finalized(m);
    LaunchScope scope(M);
    check_run(M, seq, pos, n);
    for (int i = 0; i < n; i++) check_token(M, ids[i]);
    for (int done = 0; done < n; done += M.P) {
      const int T = std::min(M.P, n - done);
      const bool last = done + T == n;
      float *out = nullptr;
      if (logits && all_rows) out = logits + (int64_t)done * M.c.vocab;
      else if (logits && last) out = logits;
      prefill_chunk(M, seq, ids + done, T, pos + done, all_rows != 0, out, hidden ? hidden + (int64_t)done * M.c.hidden : nullptr);
      // The ids and logits of this chunk must be consumed before the next chunk reuses the buffers.
      CK(cudaStreamSynchronize(M.st));
    }
    return read_token(M);
  });
}

int dw_decode(void *m, int32_t seq, int32_t pos, int32_t token, float *logits, float *hidden) {
  return guarded([&]() -> int {
    Model &M = finalized(m);
    LaunchScope scope(M);
    check_run(M, seq, pos, 1);
    check_token(M, token);
    arm_decode(M, seq, pos, token);
    CK(cudaGraphLaunch(M.graph, M.st));
    M.last_logits = M.dlogits;
    const size_t bytes = sizeof(float) * M.c.vocab;
    // Through pinned memory: with it (and the host reusing its arrays), forward() of one token on
    // the 16B shape went from 370 to 433 tok/s.
    if (logits) CK(cudaMemcpyAsync(M.host_logits, M.dlogits, bytes, cudaMemcpyDeviceToHost, M.st));
    // Outside the graph: the final norm is fused into the head's gemv there, and a step without hidden does no more.
    if (hidden) hidden_rows(M, M.dh, M.dx, M.c.hidden, 1, hidden);
    const int next = read_token(M);
    if (logits) memcpy(logits, M.host_logits, bytes);
    return next;
  });
}

int dw_decode_batch_max(void *m) {
  return guarded([&]() -> int { return as_model(m).batch_max; });
}

int dw_decode_batch(void *m, int32_t n, const int32_t *seqs, const int32_t *pos, const int32_t *tokens, float *logits,
                    int32_t *next, float *hidden) {
  return guarded([&]() -> int {
    Model &M = finalized(m);
    LaunchScope scope(M);
    BState &h = *M.host_bstate;
    arm_batch(M, n, seqs, pos, tokens);
    if (!M.bgraph[n]) {
      ensure_captured(M, M.bgraph[n], [&] { decode_batch_step(M, n); });
      CK(cudaMemcpyAsync(M.bstate, &h, sizeof h, cudaMemcpyHostToDevice, M.st));
    }
    CK(cudaGraphLaunch(M.bgraph[n], M.st));
    const size_t bytes = sizeof(float) * n * M.c.vocab;
    if (logits) CK(cudaMemcpyAsync(M.host_blogits, M.blogits, bytes, cudaMemcpyDeviceToHost, M.st));
    if (hidden) batch_hidden(M, n, hidden);
    CK(cudaMemcpyAsync(&h, M.bstate, sizeof h, cudaMemcpyDeviceToHost, M.st));
    CK(cudaStreamSynchronize(M.st));
    M.last_logits = M.blogits + (int64_t)(n - 1) * M.c.vocab;
    for (int i = 0; i < n; i++) next[i] = h.next[i];
    if (logits) memcpy(logits, M.host_blogits, bytes);
    return h.experts;
  });
}

int dw_mtp_forward(void *m, int32_t seq, int32_t pos, const int32_t *tokens, int32_t n, const float *hidden_in,
                   float *hidden_out, float *logits) {
  return guarded([&]() -> int {
    Model &M = finalized(m);
    LaunchScope scope(M);
    if (M.c.nextn == 0) dw_fail("this model was made without its MTP layer (dw_config.nextn 0)");
    if (!tokens || !hidden_in || !hidden_out || !logits) dw_fail("dw_mtp_forward: null tokens, hidden_in, hidden_out or logits");
    check_run(M, seq, pos, n);
    for (int i = 0; i < n; i++) check_token(M, tokens[i]);
    for (int done = 0; done < n; done += M.P) {
      const int T = std::min(M.P, n - done);
      const bool last = done + T == n;
      mtp_chunk(M, seq, tokens + done, T, pos + done, hidden_in + (int64_t)done * M.c.hidden, last ? hidden_out : nullptr,
                last ? logits : nullptr);
      // The inputs of this chunk must be consumed before the next chunk reuses the buffers.
      CK(cudaStreamSynchronize(M.st));
    }
    return 0;
  });
}

int dw_generate(void *m, int32_t seq, int32_t pos, int32_t token, int32_t n, int32_t *out_ids) {
  return guarded([&]() -> int {
    Model &M = finalized(m);
    LaunchScope scope(M);
    check_run(M, seq, pos, n);
    check_token(M, token);
    arm_decode(M, seq, pos, token);
    for (int i = 0; i < n; i++) CK(cudaGraphLaunch(M.graph, M.st));
    CK(cudaMemcpyAsync(out_ids, M.log, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, M.st));
    CK(cudaStreamSynchronize(M.st));
    M.last_logits = M.dlogits;
    return 0;
  });
}

int dw_profile_decode(void *m, int32_t seq, int32_t pos, int32_t token, char *out, int32_t len) {
  return guarded([&]() -> int {
    Model &M = finalized(m);
    LaunchScope scope(M);
    check_run(M, seq, pos, 1);
    check_token(M, token);
    const std::string s = profile_decode(M, seq, pos, token);
    M.last_logits = M.dlogits;
    if (out && len > 0) snprintf(out, len, "%s", s.c_str());
    return 0;
  });
}

int dw_profile_decode_batch(void *m, int32_t n, const int32_t *seqs, const int32_t *pos, const int32_t *tokens, char *out,
                            int32_t len) {
  return guarded([&]() -> int {
    Model &M = finalized(m);
    LaunchScope scope(M);
    const std::string s = profile_step(M, [&] { arm_batch(M, n, seqs, pos, tokens); }, [&] { decode_batch_step(M, n); });
    if (out && len > 0) snprintf(out, len, "%s", s.c_str());
    return 0;
  });
}

int dw_seq_copy(void *m, int32_t dst, int32_t src, int32_t n_positions) {
  return guarded([&]() -> int {
    Model &M = finalized(m);
    const int S = M.c.max_sequences;
    if (dst < 0 || dst >= S || src < 0 || src >= S)
      dw_fail("sequences " + std::to_string(src) + " -> " + std::to_string(dst) + " outside the pool (0 to " +
              std::to_string(S - 1) + ")");
    if (n_positions < 0 || n_positions > M.c.max_context)
      dw_fail(std::to_string(n_positions) + " positions: expected 0 to the context length " + std::to_string(M.c.max_context));
    if (dst == src || n_positions == 0) return 0;
    const int64_t stride = (int64_t)M.c.max_context * M.latent;
    const size_t bytes = sizeof(float) * n_positions * M.latent;
    for (const Layer &ly : M.L)
      CK(cudaMemcpyAsync(ly.cache + dst * stride, ly.cache + src * stride, bytes, cudaMemcpyDeviceToDevice, M.st));
    CK(cudaStreamSynchronize(M.st));
    return 0;
  });
}

int dw_topk(void *m, int32_t k, float *values, int32_t *ids) {
  return guarded([&]() -> int {
    Model &M = finalized(m);
    LaunchScope scope(M);
    if (!M.last_logits) dw_fail("no logits yet");
    if (k <= 0 || k > 256 || k > M.c.vocab) dw_fail("k must be 1..256");
    launch_topk(M.st, M.last_logits, M.c.vocab, k, M.topk_scratch, M.tk_vals, M.tk_ids);
    CK(cudaMemcpyAsync(values, M.tk_vals, sizeof(float) * k, cudaMemcpyDeviceToHost, M.st));
    CK(cudaMemcpyAsync(ids, M.tk_ids, sizeof(int32_t) * k, cudaMemcpyDeviceToHost, M.st));
    CK(cudaStreamSynchronize(M.st));
    return 0;
  });
}

int64_t dw_weight_bytes(void *m) {
  if (!m) return -1;
  Model &M = *static_cast<Model *>(m);
  int64_t b = bytes_of(M.embed) + bytes_of(M.head);
  for (auto &ly : M.L)
    for (auto &W : ly.m) b += bytes_of(W);
  return b;
}

int64_t dw_active_bytes(void *m) {
  if (!m) return -1;
  Model &M = *static_cast<Model *>(m);
  int64_t b = bytes_of(M.head) + (M.embed.ok() ? M.embed.ldb() : 0);
  for (int l = 0; l < M.c.layers; l++)  // a decode step does not run the MTP layer
    for (int s = 0; s < LAYER_SLOTS; s++) {
      const DMat &W = M.L[l].m[s];
      if (s == DW_ROLE_EXP_GATE_UP || s == DW_ROLE_EXP_DOWN) b += mat_bytes_one(W) * M.c.topk;
      else b += bytes_of(W);
    }
  return b;
}

int64_t dw_expert_bytes(void *m) {
  if (!m) return -1;
  Model &M = *static_cast<Model *>(m);
  for (auto &ly : M.L)
    if (ly.moe) return mat_bytes_one(ly.m[DW_ROLE_EXP_GATE_UP]) + mat_bytes_one(ly.m[DW_ROLE_EXP_DOWN]);
  return 0;
}

void dw_free(void *m) {
  if (m) free_model(static_cast<Model *>(m));
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
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 0;
  });
  return result;
}

}  // extern "C"
