#include <torch/library.h>

#include <limits>

#include "../quantile_sketch.h"
#include "cuda_helpers.h"

namespace lavise_fast {
namespace {

using namespace lavise_fast::cuda;

// The merge in parallel form (quantile_sketch.h): per channel c, the items of the merged
// sequence (old centroids and sorted new values) are numbered k < n_old[c] + n_new[c] within a
// row of `width` = capacity + L slots. Three launches: which items start a centroid (one
// thread per item), each centroid summed from its start (one thread per centroid), and the
// rows written back (one thread per slot). Same centroids as the CPU kernel, bit for bit.

// What every launch reads: per channel c, the sorted values (row of L, the n_new[c] numbers
// first) and the old centroids (row of capacity, the n_old[c] first in use).
struct SketchRows {
  const float* sorted;
  const int64_t* n_new;
  const double* means;
  const double* weights;
  const int64_t* n_old;
  int64_t C, L, capacity;

  __device__ int64_t width() const {
    return capacity + L;
  }

  __device__ int64_t items(int64_t c) const {
    return n_old[c] + n_new[c];
  }

  __device__ MergeCursor<float> cursor(int64_t c) const {
    return MergeCursor<float>{means + c * capacity, weights + c * capacity, n_old[c], sorted + c * L, n_new[c]};
  }
};

// starts[c, k] = 1 where item k of channel c starts a centroid, else 0 (also past its items
// and for a channel with no new value, which keeps its centroids).
__global__ void sketch_starts_kernel(
    SketchRows rows,
    const double* __restrict__ old_before,
    const double* __restrict__ totals,
    int32_t* __restrict__ starts) {
  const int64_t width = rows.width(), capacity = rows.capacity;
  LAVISE_CUDA_1D_KERNEL_LOOP(index, rows.C * width) {
    const int64_t c = index / width, k = index % width;
    int32_t start = 0;
    if (rows.n_new[c] > 0 && k < rows.items(c)) {
      const double total = totals[c];
      start = sketch_item_starts_centroid(
          rows.cursor(c), old_before + c * (capacity + 1), k, total, sketch_delta(capacity, total));
    }
    starts[index] = start;
  }
}

// The centroid starting at each start item, written to slot segments[c, k] - 1 of the scratch rows.
__global__ void sketch_centroids_kernel(
    SketchRows rows,
    const int32_t* __restrict__ starts,
    const int32_t* __restrict__ segments,
    double* __restrict__ scratch_means,
    double* __restrict__ scratch_weights) {
  const int64_t width = rows.width(), capacity = rows.capacity;
  LAVISE_CUDA_1D_KERNEL_LOOP(index, rows.C * width) {
    const int64_t c = index / width, k = index % width;
    const int64_t slot = segments[index] - 1;
    if (starts[index] && slot < capacity) {
      double mean, weight;
      sketch_centroid_from(rows.cursor(c), k, StartFlags{starts + c * width, rows.items(c)}, &mean, &weight);
      scratch_means[c * capacity + slot] = mean;
      scratch_weights[c * capacity + slot] = weight;
    }
  }
}

// Writes the new centroids (unused slots 0 / 0) of every channel that had a new value, and the
// summary rows (count, NaN count, min, max), as sketch_update_channel does.
__global__ void sketch_write_back_kernel(
    const float* __restrict__ sorted,
    const int64_t* __restrict__ n_new,
    const int64_t* __restrict__ nan_counts,
    const double* __restrict__ totals,
    const int32_t* __restrict__ segments,
    const double* __restrict__ scratch_means,
    const double* __restrict__ scratch_weights,
    int64_t C,
    int64_t L,
    int64_t capacity,
    double* __restrict__ means,
    double* __restrict__ weights,
    double* __restrict__ summary) {
  const int64_t width = capacity + L;
  LAVISE_CUDA_1D_KERNEL_LOOP(index, C * capacity) {
    const int64_t c = index / capacity, j = index % capacity;
    const int64_t n_values = n_new[c];
    if (j == 0) {
      double* row = summary + c * kSummaryFields;
      row[kSummaryNaN] += static_cast<double>(nan_counts[c]);
      if (n_values > 0) {
        const double first = static_cast<double>(sorted[c * L]);
        const double last = static_cast<double>(sorted[c * L + n_values - 1]);
        row[kSummaryMin] = first < row[kSummaryMin] ? first : row[kSummaryMin];
        row[kSummaryMax] = row[kSummaryMax] < last ? last : row[kSummaryMax];
        row[kSummaryCount] = totals[c];
      }
    }
    if (n_values > 0) {
      const int64_t n_out = segments[c * width + width - 1];
      means[index] = j < n_out ? scratch_means[index] : 0.0;
      weights[index] = j < n_out ? scratch_weights[index] : 0.0;
    }
  }
}

void quantile_sketch_update_kernel(
    const at::Tensor& features,
    at::Tensor& means,
    at::Tensor& weights,
    at::Tensor& summary,
    double floor_rank) {
  // The floor only spares the CPU its sorts: here every value is sorted, whatever floor_rank (the
  // sketch a floor approximates below it; at and above the floor both take the same items).
  check_quantile_sketch(features, means, weights, summary, floor_rank);
  if (features.numel() == 0) {
    return;
  }
  c10::cuda::CUDAGuard guard(features.device());
  auto x = features.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), L = N * HW;
  const int64_t capacity = means.size(1), width = capacity + L;
  TORCH_CHECK_VALUE(
      width < std::numeric_limits<int32_t>::max(), "quantile_sketch_update on CUDA takes at most 2^31 - 1 - capacity ",
      "values per channel in one batch (N * H * W), got ", L, ": update in smaller batches");
  // Each channel's values as one float32 row [C, N * HW], sorted ascending (NaN last).
  auto rows = at::empty({C, N, HW}, x.options().dtype(at::kFloat));
  rows.copy_(x.view({N, C, HW}).transpose(0, 1));
  // NaN is counted, then replaced by +inf so that it sorts last whatever the sort's NaN order.
  auto flat = rows.view({C, L});
  auto nan = flat.isnan();
  auto nan_counts = nan.sum(1).contiguous();
  flat.masked_fill_(nan, std::numeric_limits<float>::infinity());
  auto sorted = std::get<0>(at::sort(flat, /*dim=*/1)).contiguous();
  auto n_new = (L - nan_counts).contiguous();
  auto totals = (summary.select(1, kSummaryCount) + n_new.to(at::kDouble)).contiguous();
  // The old centroids: their number (the prefix of positive weights) and the weight before each.
  auto n_old = (weights > 0).to(at::kLong).cumprod(1).sum(1).contiguous();
  auto old_before = at::cat({at::zeros({C, 1}, weights.options()), weights.cumsum(1)}, 1).contiguous();
  auto starts = at::empty({C, width}, x.options().dtype(at::kInt));
  auto stream = at::cuda::getCurrentCUDAStream();
  const SketchRows sketch_rows{sorted.data_ptr<float>(), n_new.data_ptr<int64_t>(), means.data_ptr<double>(),
                               weights.data_ptr<double>(), n_old.data_ptr<int64_t>(), C, L, capacity};
  sketch_starts_kernel<<<grid_size(C * width), kThreads, 0, stream>>>(
      sketch_rows, old_before.data_ptr<double>(), totals.data_ptr<double>(), starts.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto segments = at::cumsum(starts, 1, at::kInt).contiguous();  // a centroid's slot + 1 at its start
  auto scratch_means = at::zeros({C, capacity}, means.options());
  auto scratch_weights = at::zeros({C, capacity}, weights.options());
  sketch_centroids_kernel<<<grid_size(C * width), kThreads, 0, stream>>>(
      sketch_rows, starts.data_ptr<int32_t>(), segments.data_ptr<int32_t>(), scratch_means.data_ptr<double>(),
      scratch_weights.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sketch_write_back_kernel<<<grid_size(C * capacity), kThreads, 0, stream>>>(
      sorted.data_ptr<float>(), n_new.data_ptr<int64_t>(), nan_counts.data_ptr<int64_t>(),
      totals.data_ptr<double>(), segments.data_ptr<int32_t>(), scratch_means.data_ptr<double>(),
      scratch_weights.data_ptr<double>(), C, L, capacity, means.data_ptr<double>(), weights.data_ptr<double>(),
      summary.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CUDA, m) {
  m.impl("quantile_sketch_update", &quantile_sketch_update_kernel);
}

}  // namespace lavise_fast
