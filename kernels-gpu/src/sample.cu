// Greedy sampling on the device: the argmax of a logits row into the step's state (ties to the
// lowest index, as the CPU's argmax), and the top k of a row for sampling on the host.
#include "ops.cuh"

namespace {

// Block-wide argmax, ties to the lowest index. 1024 threads.
__device__ void block_argmax(float &v, int &i) {
  __shared__ float sv[32];
  __shared__ int si[32];
  warp_argmax(v, i);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    v = lane < nw ? sv[lane] : -INFINITY;
    i = lane < nw ? si[lane] : 0x7fffffff;
    warp_argmax(v, i);
    if (lane == 0) {
      sv[0] = v;
      si[0] = i;
    }
  }
  __syncthreads();
  v = sv[0];
  i = si[0];
  __syncthreads();
}

// This thread's argmax of x[lo, hi), strided over the block (ties to the lowest index).
__device__ void thread_argmax(const float *x, int lo, int hi, float &v, int &i) {
  v = -INFINITY;
  i = 0x7fffffff;
  for (int k = lo + threadIdx.x; k < hi; k += blockDim.x) {
    const float c = x[k];
    if (i == 0x7fffffff || c > v) {
      v = c;
      i = k;
    }
  }
}

// The step's greedy token: into the state the graph reads next, the position advanced, the log.
__device__ void record_token(DState *state, int token, int advance) {
  state->token = token;
  state->pos += advance;
  if (state->log && state->count < state->cap) state->log[state->count] = token;
  state->count++;
}

__global__ void __launch_bounds__(1024) argmax_kernel(const float *logits, int n, DState *state, int advance) {
  pdl_wait();
  pdl_trigger();
  float v;
  int i;
  thread_argmax(logits, 0, n, v, i);
  block_argmax(v, i);
  if (threadIdx.x == 0) record_token(state, i, advance);
}

// The same over ARGMAX_BLOCKS blocks: each takes a contiguous chunk (one load per thread in flight,
// where one block walked the whole row), and the last block to finish combines the winners (ties
// to the lowest index, as above) and updates the state.
constexpr int ARGMAX_BLOCKS = 128;
__global__ void __launch_bounds__(256) argmax_blocks_kernel(const float *logits, int n, DState *state, int advance,
                                                            float *cv, int *ci, unsigned *counter) {
  __shared__ int last;
  pdl_wait();
  pdl_trigger();
  const int chunk = ceil_div(n, (int)gridDim.x);
  const int lo = blockIdx.x * chunk, hi = min(n, lo + chunk);
  float v;
  int i;
  thread_argmax(logits, lo, hi, v, i);
  block_argmax(v, i);
  if (threadIdx.x == 0) {
    cv[blockIdx.x] = v;
    ci[blockIdx.x] = i;
    __threadfence();
    last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  v = -INFINITY;
  i = 0x7fffffff;
  for (int b = threadIdx.x; b < (int)gridDim.x; b += blockDim.x) {
    const float c = __ldcg(cv + b);
    const int k = __ldcg(ci + b);
    if (k != 0x7fffffff && (i == 0x7fffffff || c > v || (c == v && k < i))) {
      v = c;
      i = k;
    }
  }
  block_argmax(v, i);
  if (threadIdx.x == 0) {
    record_token(state, i, advance);
    *counter = 0;
  }
}

// The batched step's argmax: block t takes row t.
__global__ void __launch_bounds__(1024) argmax_rows_kernel(const float *logits, int64_t ld, int vocab, int *out) {
  pdl_wait();
  pdl_trigger();
  float v;
  int i;
  thread_argmax(logits + blockIdx.x * ld, 0, vocab, v, i);
  block_argmax(v, i);
  if (threadIdx.x == 0) out[blockIdx.x] = i;
}

__global__ void __launch_bounds__(1024) topk_kernel(const float *logits, int n, int k, float *scratch, float *vals, int *ids) {
  for (int j = threadIdx.x; j < n; j += blockDim.x) scratch[j] = logits[j];
  __syncthreads();
  for (int r = 0; r < k; r++) {
    float v;
    int i;
    thread_argmax(scratch, 0, n, v, i);
    block_argmax(v, i);
    if (threadIdx.x == 0) {
      vals[r] = v;
      ids[r] = i;
      scratch[i] = -INFINITY;
    }
    __syncthreads();
  }
}

}  // namespace

void launch_argmax(cudaStream_t st, const float *logits, int n, DState *state, int advance, ArgmaxScratch s) {
  if (s.counter && n >= 2 * ARGMAX_BLOCKS) {
    launch_k(argmax_blocks_kernel, ARGMAX_BLOCKS, 256, 0, st, logits, n, state, advance, s.v, s.i, s.counter);
  } else {
    launch_k(argmax_kernel, 1, 1024, 0, st, logits, n, state, advance);
  }
  LAUNCHED("argmax", st);
}

void launch_argmax_rows(cudaStream_t st, const float *logits, int64_t ld, int n, int vocab, int *out) {
  launch_k(argmax_rows_kernel, n, 1024, 0, st, logits, ld, vocab, out);
  LAUNCHED("argmax_rows", st);
}

void launch_topk(cudaStream_t st, const float *logits, int n, int k, float *scratch, float *vals, int *ids) {
  topk_kernel<<<1, 1024, 0, st>>>(logits, n, k, scratch, vals, ids);
  LAUNCHED("topk", st);
}

