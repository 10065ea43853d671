#include <torch/library.h>

#include <limits>

#include "../quantile_sketch.h"
#include "cuda_helpers.h"

namespace lavise_fast {
namespace {

using namespace lavise_fast::cuda;

// Threads per block of the per-channel merge: few, so that the channels spread
// over many multiprocessors.
constexpr int kSketchThreads = 32;

// One thread per channel c: the row sorted[c, 0..L) holds the channel's values in
// ascending order, its nan_counts[c] NaN replaced by +inf (so they are the last
// entries). Updates the summary and merges the L - nan_counts[c] numbers into the
// centroids (through the scratch rows), exactly as the CPU kernel.
__global__ void quantile_sketch_cuda_kernel(
    const float* __restrict__ sorted,
    const int64_t* __restrict__ nan_counts,
    int64_t C,
    int64_t L,
    int64_t capacity,
    double* __restrict__ means,
    double* __restrict__ weights,
    double* __restrict__ summary,
    double* __restrict__ scratch_means,
    double* __restrict__ scratch_weights) {
  LAVISE_CUDA_1D_KERNEL_LOOP(c, C) {
    const int64_t n_nan = nan_counts[c];
    sketch_update_channel(
        sorted + c * L, L - n_nan, n_nan, capacity, means + c * capacity, weights + c * capacity,
        summary + c * kSummaryFields, scratch_means + c * capacity, scratch_weights + c * capacity);
  }
}

void quantile_sketch_update_kernel(
    const at::Tensor& features,
    at::Tensor& means,
    at::Tensor& weights,
    at::Tensor& summary) {
  check_quantile_sketch(features, means, weights, summary);
  if (features.numel() == 0) {
    return;
  }
  c10::cuda::CUDAGuard guard(features.device());
  auto x = features.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), L = N * HW;
  const int64_t capacity = means.size(1);
  // Each channel's values as one float32 row [C, N * HW], sorted ascending (NaN last).
  auto rows = at::empty({C, N, HW}, x.options().dtype(at::kFloat));
  rows.copy_(x.view({N, C, HW}).transpose(0, 1));
  // NaN is counted, then replaced by +inf so that it sorts last whatever the sort's NaN order.
  auto flat = rows.view({C, L});
  auto nan = flat.isnan();
  auto nan_counts = nan.sum(1).contiguous();
  flat.masked_fill_(nan, std::numeric_limits<float>::infinity());
  auto sorted = std::get<0>(at::sort(flat, /*dim=*/1)).contiguous();
  auto scratch_means = at::empty({C, capacity}, means.options());
  auto scratch_weights = at::empty({C, capacity}, weights.options());
  quantile_sketch_cuda_kernel<<<grid_size(C, kSketchThreads), kSketchThreads, 0,
                                at::cuda::getCurrentCUDAStream()>>>(
      sorted.data_ptr<float>(), nan_counts.data_ptr<int64_t>(), C, L, capacity, means.data_ptr<double>(), weights.data_ptr<double>(),
      summary.data_ptr<double>(), scratch_means.data_ptr<double>(), scratch_weights.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CUDA, m) {
  m.impl("quantile_sketch_update", &quantile_sketch_update_kernel);
}

}  // namespace lavise_fast
