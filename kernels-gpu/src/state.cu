// The step's device-side state (common.cuh's DState), set before a step or a graph replay, and the
// spin that holds the GPU while the host queues a profiled step.
#include "ops.cuh"

namespace {

__global__ void set_state_kernel(DState *state, int seq, int pos, int token) {
  state->token = token;
  state->pos = pos;
  state->seq = seq;
  state->count = 0;
}

__global__ void spin_kernel(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

}  // namespace

void launch_set_state(cudaStream_t st, DState *state, int seq, int pos, int token) {
  set_state_kernel<<<1, 1, 0, st>>>(state, seq, pos, token);
  LAUNCHED("set_state", st);
}

void launch_spin(cudaStream_t st, unsigned long long ns) {
  spin_kernel<<<1, 1, 0, st>>>(ns);
  LAUNCHED("spin", st);
}

