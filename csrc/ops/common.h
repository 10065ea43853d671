// Shared declarations for every lavise_fast operator: argument checks used by
// the CPU and CUDA kernels alike, and the host/device qualifier for math that
// both devices share.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LAVISE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LAVISE_HOST_DEVICE inline
#endif

namespace lavise_fast {

// `arg` must have `dim` dimensions; `what` names them, e.g. "[N, C, H, W]".
void check_rank(const at::Tensor& t, const char* arg, int64_t dim, const char* what);

// `arg` must be float32, float16 or bfloat16.
void check_floating(const at::Tensor& t, const char* arg);

// `arg` must have exactly `dtype`.
void check_dtype(const at::Tensor& t, const char* arg, at::ScalarType dtype);

// `arg` must live on the same device as `ref` (named `ref_arg`).
void check_same_device(const at::Tensor& t, const char* arg, const at::Tensor& ref, const char* ref_arg);

// Every entry of the integer tensor `arg` must lie in [0, bound). Reads the
// tensor (a device synchronisation on CUDA), so call it once per op.
void check_index_range(const at::Tensor& t, const char* arg, int64_t bound, const char* bound_name);

// `arg` must be bool, uint8 or a floating type (a mask).
void check_mask_dtype(const at::Tensor& t, const char* arg);

// Reduced precision in, float32 accumulate: the accumulator type of scalar_t.
template <typename scalar_t>
struct acc_type_of { using type = float; };
template <>
struct acc_type_of<double> { using type = double; };

}  // namespace lavise_fast
