// cuBLAS for the prefill GEMMs, opened with dlopen at dw_finalize so that the library builds
// without cuBLAS headers and loads where cuBLAS is missing (prefill then reports why it cannot run).
#include <dlfcn.h>
#include <cstdlib>
#include <string>
#include <vector>
#include "ops.cuh"

// The few cuBLAS declarations used here (cublas_api.h of CUDA 12/13), as function-pointer types
// only: the real header is never included, so the build is the same with or without it.
typedef struct cublasContext *cublasHandle_t;
typedef int cublasStatus_t;
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69 };
enum { CUBLAS_GEMM_DEFAULT = -1 };
enum { CUBLAS_DEFAULT_MATH = 0 };
typedef cublasStatus_t (*create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*set_stream_fn)(cublasHandle_t, cudaStream_t);
typedef cublasStatus_t (*set_math_fn)(cublasHandle_t, int);
typedef cublasStatus_t (*gemm_strided_fn)(cublasHandle_t, int transa, int transb, int m, int n, int k, const void *alpha,
                                          const void *A, int Atype, int lda, long long strideA, const void *B, int Btype,
                                          int ldb, long long strideB, const void *beta, void *C, int Ctype, int ldc,
                                          long long strideC, int batchCount, int computeType, int algo);

struct Blas {
  void *lib = nullptr;
  cublasHandle_t h = nullptr;
  create_fn create = nullptr;
  destroy_fn destroy = nullptr;
  set_stream_fn set_stream = nullptr;
  set_math_fn set_math = nullptr;
  gemm_strided_fn gemm = nullptr;
};

static void blas_check(cublasStatus_t s, const char *what) {
  if (s != 0) dw_fail(std::string("cuBLAS ") + what + " failed with status " + std::to_string((int)s));
}

Blas *blas_open(cudaStream_t st) {
  std::vector<std::string> names;
  if (const char *env = getenv("DW_CUBLAS")) names.push_back(env);
  names.push_back("libcublas.so.13");
  names.push_back("/usr/local/cuda-13.0/lib64/libcublas.so.13");
  names.push_back("/usr/local/cuda/lib64/libcublas.so.13");
  names.push_back("libcublas.so.12");
  names.push_back("libcublas.so");
  std::string why;
  void *lib = nullptr;
  for (auto &n : names) {
    lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    const char *e = dlerror();
    why += "\n  " + n + ": " + (e ? e : "not found");
  }
  if (!lib) dw_fail("cannot load cuBLAS (needed for prefill); set DW_CUBLAS to libcublas.so's path. Tried:" + why);
  Blas *b = new Blas();
  b->lib = lib;
  auto sym = [&](const char *name) {
    void *p = dlsym(lib, name);
    if (!p) dw_fail(std::string("cuBLAS has no symbol ") + name);
    return p;
  };
  b->create = (decltype(b->create))sym("cublasCreate_v2");
  b->destroy = (decltype(b->destroy))sym("cublasDestroy_v2");
  b->set_stream = (decltype(b->set_stream))sym("cublasSetStream_v2");
  b->set_math = (decltype(b->set_math))sym("cublasSetMathMode");
  b->gemm = (decltype(b->gemm))sym("cublasGemmStridedBatchedEx");
  blas_check(b->create(&b->h), "create");
  blas_check(b->set_stream(b->h, st), "set stream");
  blas_check(b->set_math(b->h, CUBLAS_DEFAULT_MATH), "set math mode");
  return b;
}

void blas_close(Blas *b) {
  if (!b) return;
  if (b->h) b->destroy(b->h);
  // The library stays loaded: unloading cuBLAS while CUDA is alive is not worth the risk.
  delete b;
}

// Row-major Y[M, N] = X[M, K] W[N, K]^T is, column-major, Y^T = W^T(op T of W as K x N) X^T.
void blas_gemm_f32(Blas *b, const float *W, int ldw, int64_t strideW, const float *X, int ldx, int64_t strideX, float *Y,
                   int ldy, int64_t strideY, int M, int N, int K, int batch, float beta) {
  const float one = 1.f;
  blas_check(b->gemm(b->h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, W, CUDA_R_32F, ldw, strideW, X, CUDA_R_32F, ldx,
                     strideX, &beta, Y, CUDA_R_32F, ldy, strideY, batch, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT),
             "f32 GEMM");
}

void blas_gemm_bf16(Blas *b, const __nv_bfloat16 *W, int ldw, int64_t strideW, const __nv_bfloat16 *X, int ldx,
                    int64_t strideX, float *Y, int ldy, int64_t strideY, int M, int N, int K, int batch, float beta) {
  const float one = 1.f;
  blas_check(b->gemm(b->h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, W, CUDA_R_16BF, ldw, strideW, X, CUDA_R_16BF, ldx,
                     strideX, &beta, Y, CUDA_R_32F, ldy, strideY, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "bf16 GEMM");
}
