#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../quantile_sketch.h"
#include "../ranking.h"

namespace lavise_fast {
namespace {

constexpr int kDigitBits = 11;  // radix sort digits: 11, 11 and 10 bits of a 32-bit key
constexpr int kDigits = 3;
constexpr uint32_t kDigitMask = (1u << kDigitBits) - 1;

// The channel's values in ascending order, NaN left out. One pass reads the channel
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
    int64_t* n_nan) {
  std::fill(counts.begin(), counts.end(), 0);
  int64_t* hist[kDigits] = {counts.data(), counts.data() + (1 << kDigitBits), counts.data() + (2 << kDigitBits)};
  int64_t n = 0, n_zero = 0, n_negative = 0;
  for (int64_t i = 0; i < N; ++i) {
    const scalar_t* src = x + (i * C + c) * HW;
    for (int64_t p = 0; p < HW; ++p) {
      const float v = static_cast<float>(src[p]);
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
  *n_nan = N * HW - n - n_zero;
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
void quantile_sketch_impl(const at::Tensor& features, at::Tensor& means, at::Tensor& weights, at::Tensor& summary) {
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
    for (int64_t c = begin; c < end; ++c) {
      int64_t n_nan = 0;
      const int64_t n_values = sorted_channel(x, N, C, HW, c, keys, scratch, counts, sorted.data(), &n_nan);
      sketch_update_channel(
          sorted.data(), n_values, n_nan, capacity, mu + c * capacity, wt + c * capacity, sm + c * kSummaryFields,
          out_means.data(), out_weights.data());
    }
  });
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
  auto x = features.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantile_sketch_update_cpu", [&] {
    quantile_sketch_impl<scalar_t>(x, means, weights, summary);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CPU, m) {
  m.impl("quantile_sketch_update", &quantile_sketch_update_kernel);
}

}  // namespace lavise_fast
