// The decode schedule: one token of one sequence, captured once as a CUDA graph and replayed for
// every step. Sequence, position and token live in the device-side state (common.cuh's DState),
// which the embedding, attention and argmax kernels read, so the graph needs no arguments. Per MoE
// layer: q|kv_a gemv, (q_b gemv,) absorb, attention, W_UV, o_proj gemv, router + routing + shared
// gate/up, routed gate/up, down; the step ends with the lm_head gemv and the argmax, which writes the
// next token and position into the state.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <vector>
#include "model.cuh"

void gemv_multi(Model &M, const float *x, const float *norm, int cols, std::initializer_list<GemvOut> outs, int n,
                int xld) {
  std::vector<GemvOut> todo(outs);
  while (!todo.empty()) {
    const int fmt = todo[0].W->fmt;
    GemvParams p{};
    p.x = x;
    p.norm = norm;
    p.eps = M.c.rms_eps;
    p.cols = cols;
    p.n = n;
    p.xld = xld;
    int64_t rows = 0;
    std::vector<GemvOut> rest;
    for (const GemvOut &o : todo) {
      if (o.W->fmt != fmt || p.nseg == GEMV_MAXSEG) {
        rest.push_back(o);
        continue;
      }
      if (o.W->cols != cols) dw_fail("internal: gemv input size mismatch");
      p.seg[p.nseg++] = GemvSeg{wref(*o.W), o.W->rows, o.add ? 1 : 0, o.y, 0, o.yld};
      rows += o.W->rows;
    }
    p.rpw = gemv_rows_per_warp(rows, M.nsm);
    if (n > 0) launch_gemv_batch(M.st, fmt, p, M.nsm);
    else launch_gemv(M.st, fmt, p);
    todo.swap(rest);
  }
}

MoeParams moe_params(const Model &M, const Layer &ly) {
  const dw_config &c = M.c;
  MoeParams p{};
  p.hidden = c.hidden;
  p.eps = c.rms_eps;
  p.act = M.dact;
  p.xout = M.dx;
  if (ly.moe) {
    const DMat &gu = ly.m[DW_ROLE_EXP_GATE_UP], &dn = ly.m[DW_ROLE_EXP_DOWN];
    p.gu = wref(gu);
    p.dn = wref(dn);
    p.gu_estride = gu.estride;
    p.dn_estride = dn.estride;
    p.gu_sestride = gu.sestride;
    p.dn_sestride = dn.sestride;
    p.inter = c.moe_inter;
    p.inter8 = round_up(c.moe_inter, 8);
    p.k = c.topk;
    p.fixed_off = c.topk * p.inter8;
    p.chosen = M.dchosen;
    p.weights = M.dw;
    p.x = M.dh;  // normalised by the router kernel
    if (c.n_shared > 0) {
      p.fgu = wref(ly.m[DW_ROLE_SH_GATE_UP]);
      p.fdn = wref(ly.m[DW_ROLE_SH_DOWN]);
      p.finter = c.moe_inter * c.n_shared;
      p.has_fixed = 1;
    }
  } else {
    p.fgu = wref(ly.m[DW_ROLE_GATE_UP]);
    p.fdn = wref(ly.m[DW_ROLE_DOWN]);
    p.finter = c.inter;
    p.has_fixed = 1;
    p.x = M.dx;
    p.norm = ly.v[DW_ROLE_FFN_NORM];
  }
  return p;
}

// Profiling: the time from one mark to the next is charged to the first mark's name.
void mark(Model &M, const char *name, int64_t bytes) {
  if (!M.prof) return;
  cudaEvent_t e;
  CK(cudaEventCreate(&e));
  CK(cudaEventRecord(e, M.st));
  M.prof->push_back({name, bytes, e});
}

namespace {

void moe_layer(Model &M, const Layer &ly) {
  const dw_config &c = M.c;
  const DMat &router = ly.m[DW_ROLE_ROUTER], &gu = ly.m[DW_ROLE_EXP_GATE_UP];
  // 1: router logits and routing (the first blocks) with the shared experts' gate/up (the rest).
  mark(M, "router + shared gate/up", bytes_of(router) + bytes_of(ly.m[DW_ROLE_SH_GATE_UP]));
  MoeParams a = moe_params(M, ly);
  a.k = 0;
  a.x = M.dx;
  a.norm = ly.v[DW_ROLE_FFN_NORM];
  a.h_out = M.dh;
  a.router = wref(router);
  a.router_fmt = router.fmt;
  a.router_blocks = ceil_div(c.n_routed, 8);
  a.logits = M.drlog;
  a.ra = route_args(M, ly);
  a.route_e = M.dchosen;
  a.route_w = M.dw;
  a.counter = M.counter;
  launch_moe_gateup(M.st, c.n_shared > 0 ? ly.m[DW_ROLE_SH_GATE_UP].fmt : router.fmt, a);
  // 2: the chosen experts' gate/up.
  mark(M, "routed gate/up", bytes_of(gu, c.topk));
  MoeParams r = moe_params(M, ly);
  r.has_fixed = 0;
  launch_moe_gateup(M.st, gu.fmt, r);
  // 3: every slot's down, weighted, into the residual.
  mark(M, "down (routed + shared)", bytes_of(ly.m[DW_ROLE_EXP_DOWN], c.topk) + bytes_of(ly.m[DW_ROLE_SH_DOWN]));
  launch_moe_down(M.st, gu.fmt, moe_params(M, ly));
}

}  // namespace

void decode_step(Model &M) {
  const dw_config &c = M.c;
  PdlScope scope;
  mark(M, "embed", 0);
  launch_embed(M.st, M.embed, nullptr, M.state, M.dx, 1, c.hidden, c.hidden);
  launch_flags().pdl = M.pdl && !M.prof;
  for (int l = 0; l < c.layers; l++) {
    const Layer &ly = M.L[l];
    mark(M, "q/kv_a gemv", bytes_of(ly.m[DW_ROLE_Q_PROJ]) + bytes_of(ly.m[DW_ROLE_Q_A]) + bytes_of(ly.m[DW_ROLE_Q_B]) +
                               bytes_of(ly.m[DW_ROLE_KV_A]));
    if (c.q_lora_rank > 0) {
      gemv_multi(M, M.dx, ly.v[DW_ROLE_ATTN_NORM], c.hidden,
                 {{&ly.m[DW_ROLE_Q_A], M.dqa, false, 0}, {&ly.m[DW_ROLE_KV_A], M.dkv, false, 0}});
      gemv_multi(M, M.dqa, ly.v[DW_ROLE_Q_A_NORM], c.q_lora_rank, {{&ly.m[DW_ROLE_Q_B], M.dq, false, 0}});
    } else {
      gemv_multi(M, M.dx, ly.v[DW_ROLE_ATTN_NORM], c.hidden,
                 {{&ly.m[DW_ROLE_Q_PROJ], M.dq, false, 0}, {&ly.m[DW_ROLE_KV_A], M.dkv, false, 0}});
    }
    mark(M, "mla (absorb, attend, W_UV)", bytes_of(ly.m[DW_ROLE_KV_B]));
    launch_mla(M.st, mla_params(M, ly, 1, true));
    mark(M, "o_proj gemv", bytes_of(ly.m[DW_ROLE_O_PROJ]));
    gemv_multi(M, M.dattn, nullptr, c.heads * c.v_dim, {{&ly.m[DW_ROLE_O_PROJ], M.dx, true, 0}});
    if (ly.moe) {
      moe_layer(M, ly);
    } else {
      const DMat &gu = ly.m[DW_ROLE_GATE_UP];
      MoeParams mp = moe_params(M, ly);
      mark(M, "dense mlp", bytes_of(gu) + bytes_of(ly.m[DW_ROLE_DOWN]));
      launch_moe_gateup(M.st, gu.fmt, mp);
      launch_moe_down(M.st, gu.fmt, mp);
    }
  }
  mark(M, "lm_head gemv", bytes_of(M.head));
  gemv_multi(M, M.dx, M.final_norm, c.hidden, {{&M.head, M.dlogits, false, 0}});
  mark(M, "argmax", 0);
  launch_argmax(M.st, M.dlogits, c.vocab, M.state, 1, M.amax);
  mark(M, "end", 0);
}

namespace {

void capture(Model &M, cudaGraphExec_t &graph, const std::function<void()> &step) {
  cudaGraph_t g = nullptr;
  CK(cudaStreamBeginCapture(M.st, cudaStreamCaptureModeThreadLocal));
  try {
    step();
  } catch (...) {
    cudaGraph_t dummy = nullptr;
    cudaStreamEndCapture(M.st, &dummy);
    if (dummy) cudaGraphDestroy(dummy);
    throw;
  }
  CK(cudaStreamEndCapture(M.st, &g));
  cudaError_t e = cudaGraphInstantiate(&graph, g, 0);
  cudaGraphDestroy(g);
  CK(e);
}

}  // namespace

// Captures a step once. The device-side inputs must already hold the step's tokens and positions:
// the step runs once uncaptured first (kernel attributes set, launch errors named; with
// sync_launches each kernel checked), which computes exactly what the replay that follows recomputes.
void ensure_captured(Model &M, cudaGraphExec_t &graph, const std::function<void()> &step) {
  if (graph) return;
  step();
  CK(cudaStreamSynchronize(M.st));
  if (!M.pdl) return capture(M, graph, step);
  try {
    capture(M, graph, step);
  } catch (const std::exception &e) {
    // A driver that cannot capture programmatic launches: clear the error, capture without them (every graph).
    cudaGetLastError();
    graph = nullptr;
    M.pdl = false;
    fprintf(stderr, "deepwasm cuda: decode graph without programmatic dependent launch (%s)\n", e.what());
    capture(M, graph, step);
  }
}

void ensure_graph(Model &M) {
  ensure_captured(M, M.graph, [&] { decode_step(M); });
}

std::string profile_decode(Model &M, int seq, int pos, int token) {
  return profile_step(M, [&] { launch_set_state(M.st, M.state, seq, pos, token); }, [&] { decode_step(M); });
}

std::string profile_step(Model &M, const std::function<void()> &arm, const std::function<void()> &step) {
  std::vector<Model::Mark> marks;
  arm();
  step();  // warm: kernel attributes, caches
  arm();
  // Hold the GPU for 20 ms so that the whole step is queued before it starts: the events then
  // time the kernels, not the host's launches.
  launch_spin(M.st, 20000000ull);
  M.prof = &marks;
  try {
    step();
  } catch (...) {
    M.prof = nullptr;
    for (auto &mk : marks) cudaEventDestroy(mk.ev);
    throw;
  }
  M.prof = nullptr;
  CK(cudaStreamSynchronize(M.st));
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
  return s;
}
