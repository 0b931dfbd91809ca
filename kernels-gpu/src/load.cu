// Weights into their roles: checkpoint tensors (dw_load) converted on the device into the role's
// declared format, or random ones for benchmarks (dw_fill_random). Both go through a staging buffer
// of at most STAGE_BYTES, a band of rows at a time.
#include <algorithm>
#include "model.cuh"

// Rows per band of a copy: as many as fit in the staging buffer, whole FP8 block rows.
static int64_t band_rows(int64_t row_bytes, int block_rows) {
  int64_t n = std::max<int64_t>(1, (int64_t)STAGE_BYTES / row_bytes);
  if (block_rows > 0) n = std::max<int64_t>(block_rows, n / block_rows * block_rows);
  return n;
}

void load_tensor(Model &M, int layer, int role, int expert, int dtype, const void *data, int64_t rows, int64_t cols,
                 int64_t row_offset, const float *scales, int block_rows, int block_cols) {
  if (M.finalized) dw_fail("dw_load after dw_finalize");
  if (!data) dw_fail("null data");
  const std::string name = role_name(layer, role);
  const Shape s = shape_of(M, layer, role);
  if (float **v = vector_of(M, layer, role)) {
    if (dtype != DW_DTYPE_F32) dw_fail(name + ": vectors are loaded as F32");
    if (rows * cols != s.rows) dw_fail(name + ": expected " + std::to_string(s.rows) + " values, got " + std::to_string(rows * cols));
    if (!*v) *v = M.alloc<float>(s.rows);
    CK(cudaMemcpyAsync(*v, data, sizeof(float) * s.rows, cudaMemcpyHostToDevice, M.st));
    CK(cudaStreamSynchronize(M.st));
    return;
  }
  DMat &W = *matrix_of(M, layer, role);
  if (cols != s.cols) dw_fail(name + ": expected " + std::to_string(s.cols) + " columns, got " + std::to_string(cols));
  if (row_offset < 0 || rows <= 0 || row_offset + rows > s.rows)
    dw_fail(name + ": rows [" + std::to_string(row_offset) + ", " + std::to_string(row_offset + rows) + ") outside [0, " +
            std::to_string(s.rows) + ")");
  if (expert < 0 || expert >= s.experts) dw_fail(name + ": expert " + std::to_string(expert) + " out of range");
  if (dtype < DW_DTYPE_F32 || dtype > DW_DTYPE_F8_E4M3) dw_fail(name + ": unknown dtype " + std::to_string(dtype));
  const bool fp8 = dtype == DW_DTYPE_F8_E4M3;
  if (fp8 && (!scales || block_rows <= 0 || block_cols <= 0)) dw_fail(name + ": F8_E4M3 data needs its block scales");
  if (W.fmt < 0) dw_fail(name + ": declare its device format (dw_declare) before loading it");
  if (W.fmt == F_FP8 && (!fp8 || block_cols % 8 != 0))
    dw_fail(name + ": fp8 on the device keeps F8_E4M3 data whose scale blocks are a multiple of 8 columns wide; got " +
            dtype_name(dtype) + (fp8 ? " with " + std::to_string(block_cols) + "-column blocks" : std::string()));
  if (!W.ok()) alloc_matrix(M, W, s, block_cols);
  const int64_t row_bytes = cols * dtype_size(dtype);
  const int64_t band = band_rows(row_bytes, fp8 ? block_rows : 0);
  const int nbc = fp8 ? ceil_div((int)cols, block_cols) : 0;
  for (int64_t r0 = 0; r0 < rows; r0 += band) {
    const int64_t n = std::min(band, rows - r0);
    const size_t bytes = (size_t)(n * row_bytes);
    const size_t off = (bytes + 255) / 256 * 256;
    const size_t sbytes = fp8 ? (size_t)ceil_div((int)n, block_rows) * nbc * 4 : 0;
    char *st = static_cast<char *>(staging(M, off + sbytes));
    CK(cudaMemcpyAsync(st, static_cast<const char *>(data) + r0 * row_bytes, bytes, cudaMemcpyHostToDevice, M.st));
    float *sdev = nullptr;
    if (fp8) {
      sdev = reinterpret_cast<float *>(st + off);
      CK(cudaMemcpyAsync(sdev, scales + (r0 / block_rows) * nbc, sbytes, cudaMemcpyHostToDevice, M.st));
    }
    launch_convert(M.st, W, expert, row_offset + r0, dtype, st, n, cols, sdev, block_rows, block_cols);
  }
  CK(cudaStreamSynchronize(M.st));
  W.loaded += rows;
}

void fill_random(Model &M, uint64_t seed) {
  if (M.finalized) dw_fail("dw_fill_random after dw_finalize");
  auto fill_mat = [&](DMat &W, const Shape &s, int layer, int role, uint64_t id) {
    if (W.ok()) return;
    if (W.fmt < 0) W.fmt = F_BF16;
    if (W.fmt == F_FP8) dw_fail(role_name(layer, role) + ": random weights are made in f32, bf16 or q8, not fp8");
    alloc_matrix(M, W, s, DW_FP8_BLOCK);
    const uint64_t mseed = seed * 0x100000001b3ull + id * 0x9e3779b97f4a7c15ull;
    const int64_t band = band_rows(s.cols * 2, 0);
    auto *st = static_cast<__nv_bfloat16 *>(staging(M, (size_t)(std::min<int64_t>(band, s.rows) * s.cols * 2)));
    for (int e = 0; e < s.experts; e++)
      for (int64_t r0 = 0; r0 < s.rows; r0 += band) {
        const int64_t n = std::min(band, s.rows - r0);
        launch_random_bf16(M.st, st, n, (int)s.cols, mseed, ((int64_t)e * s.rows + r0) * s.cols);
        launch_convert(M.st, W, e, r0, DW_DTYPE_BF16, st, n, s.cols, nullptr, 0, 0);
      }
    W.loaded = s.rows * s.experts;
  };
  auto fill_norm = [&](float *&v, int64_t n) {
    if (v) return;
    v = M.alloc<float>(n, false);
    launch_fill(M.st, v, n, 1.f);
  };
  for (int l = 0; l < (int)M.L.size(); l++) {
    for (int r = 0; r < LAYER_SLOTS; r++) {
      const Shape s = layer_shape(M, l, r);
      if (s.rows == 0 || r == DW_ROLE_ROUTER_BIAS) continue;
      if (s.vec) fill_norm(M.L[l].v[r], s.rows);
      else fill_mat(M.L[l].m[r], s, l, r, (uint64_t)l * 64 + r);
    }
  }
  fill_mat(M.embed, global_shape(M, DW_ROLE_EMBED), -1, DW_ROLE_EMBED, 100000);
  fill_mat(M.head, global_shape(M, DW_ROLE_LM_HEAD), -1, DW_ROLE_LM_HEAD, 100001);
  fill_norm(M.final_norm, M.c.hidden);
  CK(cudaStreamSynchronize(M.st));
}
