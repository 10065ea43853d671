#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../quantile_sketch.h"
#include "../ranking.h"

namespace lavise_fast {
namespace {

constexpr int kDigitBits = 11;  // radix sort digits: 11, 11 and 10 bits of a 32-bit key
constexpr int kDigits = 3;
constexpr uint32_t kDigitMask = (1u << kDigitBits) - 1;

// The values of a channel below its floor (see sketch_floor), as kFloorBins bins of weight and sum.
struct FloorBins {
  double weight[kFloorBins];
  double sum[kFloorBins];
  int64_t count = 0;                                     // values in all bins
  double min = std::numeric_limits<double>::infinity();  // the least of them
};

// The channel's values in ascending order, NaN left out, except those below the floor (when it
// is on), which go to their bins instead. One pass reads the channel
// from features (x: [N, C, HW], channel c) into order-preserving 32-bit keys, counting
// NaN, negatives and zeros and taking the histograms of all three digits; then one LSD
// radix pass per digit over the non-zero keys (skipped when every key has the same digit
// there) and one pass back to floats, the zeros (half of a ReLU map, never sorted) written
// between the negatives and the positives. Returns the number of values in `sorted`.
template <typename scalar_t>
int64_t sorted_channel(
    const scalar_t* x,
    int64_t N,
    int64_t C,
    int64_t HW,
    int64_t c,
    std::vector<uint32_t>& keys,
    std::vector<uint32_t>& scratch,
    std::vector<int64_t>& counts,
    float* sorted,
    int64_t* n_nan,
    const SketchFloor& floor,
    FloorBins& bins) {
  std::fill(counts.begin(), counts.end(), 0);
  std::fill(bins.weight, bins.weight + kFloorBins, 0.0);
  std::fill(bins.sum, bins.sum + kFloorBins, 0.0);
  bins.count = 0;
  bins.min = std::numeric_limits<double>::infinity();
  int64_t zeros_below = 0;
  int64_t* hist[kDigits] = {counts.data(), counts.data() + (1 << kDigitBits), counts.data() + (2 << kDigitBits)};
  int64_t n = 0, n_zero = 0, n_negative = 0;
  for (int64_t i = 0; i < N; ++i) {
    const scalar_t* src = x + (i * C + c) * HW;
    for (int64_t p = 0; p < HW; ++p) {
      const float v = static_cast<float>(src[p]);
      if (floor.below(v)) {
        ++bins.count;
        if (v == 0.0f) {
          ++zeros_below;  // ReLU zeros: counted apart, not through a chain of adds to one bin
          continue;
        }
        const int b = floor.bin(v);
        bins.weight[b] += 1.0;
        bins.sum[b] += static_cast<double>(v);
        bins.min = std::min(bins.min, static_cast<double>(v));
        continue;
      }
      const uint32_t key = orderable_bits(v);
      keys[n] = key;
      const bool keep = v < 0.0f || v > 0.0f;  // not NaN nor zero: its key is overwritten by the next one
      n += keep;
      n_zero += v == 0.0f;
      n_negative += v < 0.0f;
      hist[0][key & kDigitMask] += keep;
      hist[1][(key >> kDigitBits) & kDigitMask] += keep;
      hist[2][key >> (2 * kDigitBits)] += keep;
    }
  }
  if (zeros_below > 0) {
    bins.weight[floor.bin(0.0f)] += static_cast<double>(zeros_below);
    bins.min = std::min(bins.min, 0.0);
  }
  *n_nan = N * HW - n - n_zero - bins.count;
  uint32_t* src = keys.data();
  uint32_t* dst = scratch.data();
  for (int d = 0; d < kDigits && n > 1; ++d) {
    const int shift = d * kDigitBits;
    int64_t* count = hist[d];
    if (count[(src[0] >> shift) & kDigitMask] == n) {
      continue;  // one digit for all keys: this pass changes nothing
    }
    int64_t offset = 0;
    for (uint32_t digit = 0; digit <= kDigitMask; ++digit) {
      const int64_t k = count[digit];
      count[digit] = offset;
      offset += k;
    }
    for (int64_t i = 0; i < n; ++i) {
      dst[count[(src[i] >> shift) & kDigitMask]++] = src[i];
    }
    std::swap(src, dst);
  }
  for (int64_t i = 0; i < n_negative; ++i) {
    sorted[i] = from_orderable_bits(src[i]);
  }
  std::fill(sorted + n_negative, sorted + n_negative + n_zero, 0.0f);
  for (int64_t i = n_negative; i < n; ++i) {
    sorted[i + n_zero] = from_orderable_bits(src[i]);
  }
  return n + n_zero;
}

template <typename scalar_t>
void quantile_sketch_impl(
    const at::Tensor& features,
    at::Tensor& means,
    at::Tensor& weights,
    at::Tensor& summary,
    double floor_rank) {
  const int64_t N = features.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  const int64_t capacity = means.size(1);
  const scalar_t* x = features.data_ptr<scalar_t>();
  double* mu = means.data_ptr<double>();
  double* wt = weights.data_ptr<double>();
  double* sm = summary.data_ptr<double>();
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sorted(N * HW);
    std::vector<uint32_t> keys(N * HW), scratch(N * HW);
    std::vector<int64_t> counts(kDigits << kDigitBits);
    std::vector<double> out_means(capacity), out_weights(capacity);
    std::vector<double> items_means(capacity + kFloorBins), items_weights(capacity + kFloorBins);
    FloorBins bins;
    for (int64_t c = begin; c < end; ++c) {
      double* cm = mu + c * capacity;
      double* cw = wt + c * capacity;
      double* row = sm + c * kSummaryFields;
      const SketchFloor floor = sketch_floor(cm, cw, capacity, row, N * HW, floor_rank);
      int64_t n_nan = 0;
      const int64_t n_values = sorted_channel(x, N, C, HW, c, keys, scratch, counts, sorted.data(), &n_nan, floor,
                                              bins);
      if (bins.count == 0) {
        sketch_update_channel(sorted.data(), n_values, n_nan, capacity, cm, cw, row, out_means.data(),
                              out_weights.data());
        continue;
      }
      // The bins join the old centroids as weighted items (merged by mean, old first on ties).
      const int64_t n_old = sketch_centroids_used(cw, capacity);
      int64_t i = 0, k = 0;
      for (int b = 0; b <= kFloorBins; ++b) {
        if (b < kFloorBins && bins.weight[b] == 0.0) {
          continue;
        }
        const double bin_mean = b < kFloorBins ? bins.sum[b] / bins.weight[b] : 0.0;
        while (i < n_old && (b == kFloorBins || cm[i] <= bin_mean)) {
          items_means[k] = cm[i];
          items_weights[k++] = cw[i++];
        }
        if (b < kFloorBins) {
          items_means[k] = bin_mean;
          items_weights[k++] = bins.weight[b];
        }
      }
      sketch_update_channel_with(sorted.data(), n_values, n_nan, bins.count, bins.min, capacity, items_means.data(),
                                 items_weights.data(), k, cm, cw, row, out_means.data(), out_weights.data());
    }
  });
}

void quantile_sketch_update_kernel(
    const at::Tensor& features,
    at::Tensor& means,
    at::Tensor& weights,
    at::Tensor& summary,
    double floor_rank) {
  check_quantile_sketch(features, means, weights, summary, floor_rank);
  if (features.numel() == 0) {
    return;
  }
  auto x = features.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantile_sketch_update_cpu", [&] {
    quantile_sketch_impl<scalar_t>(x, means, weights, summary, floor_rank);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CPU, m) {
  m.impl("quantile_sketch_update", &quantile_sketch_update_kernel);
}

}  // namespace lavise_fast
