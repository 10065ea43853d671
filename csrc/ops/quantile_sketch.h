// quantile_sketch_update: a streaming, mergeable per-channel quantile sketch.
//
// Each channel keeps at most `capacity` centroids (mean, weight), sorted by mean,
// plus a summary row (count, nan_count, min, max). An update merges the sorted
// finite-or-infinite values of the batch (NaN is counted and ignored) with the
// centroids and compresses: walking the merged sequence in order with total
// weight W, the item with cumulative weight `before` and weight w has quantile
// q = (before + w/2) / W and bucket floor(delta * logit(q)); consecutive items in
// the same bucket become one centroid. delta = (capacity - 2) / (2 ln 2W) keeps
// at most `capacity` buckets. The logit scale makes centroids hold a share
// ~ q(1 - q) / delta of the data: fine in both tails, where thresholds live.
#pragma once

#include "common.h"

#include <cfloat>

namespace lavise_fast {

constexpr int64_t kSummaryCount = 0;
constexpr int64_t kSummaryNaN = 1;
constexpr int64_t kSummaryMin = 2;
constexpr int64_t kSummaryMax = 3;
constexpr int64_t kSummaryFields = 4;

// features [N, C, H, W] floating; means, weights [C, capacity] float64; summary [C, 4] float64.
void check_quantile_sketch(
    const at::Tensor& features,
    const at::Tensor& means,
    const at::Tensor& weights,
    const at::Tensor& summary);

LAVISE_HOST_DEVICE bool is_infinite(double x) {
  return x > DBL_MAX || x < -DBL_MAX;
}

LAVISE_HOST_DEVICE double sketch_delta(int64_t capacity, double total) {
  return static_cast<double>(capacity - 2) / (2.0 * log(2.0 * total));
}

LAVISE_HOST_DEVICE double sketch_bucket(double before, double weight, double total, double delta) {
  const double below = before + 0.5 * weight;
  return floor(delta * log(below / (total - below)));
}

// A value of `before + weight / 2` under which sketch_bucket stays at `bucket`: the exact
// boundary, where delta * logit(q) reaches bucket + 1, lowered by a relative 1e-9, far more
// than the rounding of either computation. sketch_bucket is monotone in `before`, so an item
// below this needs no logarithm.
LAVISE_HOST_DEVICE double sketch_bucket_end(double bucket, double total, double delta) {
  const double q = 1.0 / (1.0 + exp(-(bucket + 1.0) / delta));
  return q * total * (1.0 - 1e-9);
}

// Merges old centroids (sorted by mean; n_old of them) with sorted new values
// (n_new, each of weight 1; on equal values the old centroid comes first) and
// writes the compressed centroids to out_means/out_weights. Returns their count.
// `total` is the weight of everything (old + new).
template <typename value_t>
LAVISE_HOST_DEVICE int64_t sketch_merge_compress(
    const double* old_means,
    const double* old_weights,
    int64_t n_old,
    const value_t* values,
    int64_t n_new,
    double total,
    int64_t capacity,
    double* out_means,
    double* out_weights) {
  const double delta = sketch_delta(capacity, total);
  int64_t i = 0, j = 0, n_out = -1;
  double before = 0.0, bucket = 0.0, bucket_end = 0.0, mean = 0.0, weight = 0.0;
  while (i < n_old || j < n_new) {
    double m, w;
    if (i < n_old && (j >= n_new || old_means[i] <= static_cast<double>(values[j]))) {
      m = old_means[i];
      w = old_weights[i];
      ++i;
    } else {
      m = static_cast<double>(values[j]);
      w = 1.0;
      ++j;
    }
    double b = bucket;  // below bucket_end an item is in the current bucket: no logarithm
    if (n_out < 0 || before + 0.5 * w >= bucket_end) {
      b = sketch_bucket(before, w, total, delta);
      bucket_end = sketch_bucket_end(b, total, delta);
    }
    if (n_out >= 0 && b == bucket) {
      weight += w;
      if (is_infinite(m) || is_infinite(mean)) {
        mean = is_infinite(mean) ? mean : m;  // a centroid holding an infinity stays infinite
      } else if (m != mean) {
        mean += (m - mean) * (w / weight);  // exact when every member has the same mean
      }
    } else {
      if (n_out >= 0) {
        out_means[n_out] = mean;
        out_weights[n_out] = weight;
      }
      ++n_out;
      bucket = b;
      mean = m;
      weight = w;
    }
    before += w;
  }
  if (n_out >= 0) {
    out_means[n_out] = mean;
    out_weights[n_out] = weight;
  }
  return n_out + 1;
}

// Folds one channel's batch into its sketch: counts n_nan NaN, updates the summary row
// (count, nan_count, min, max) and merges the n_values sorted numbers into the centroid rows
// (means, weights: `capacity` slots, unused ones of weight 0) through the scratch rows.
// A channel with no number keeps its centroids as they were.
LAVISE_HOST_DEVICE void sketch_update_channel(
    const float* sorted,
    int64_t n_values,
    int64_t n_nan,
    int64_t capacity,
    double* means,
    double* weights,
    double* summary,
    double* scratch_means,
    double* scratch_weights) {
  summary[kSummaryNaN] += static_cast<double>(n_nan);
  if (n_values == 0) {
    return;
  }
  const double first = static_cast<double>(sorted[0]);
  const double last = static_cast<double>(sorted[n_values - 1]);
  summary[kSummaryMin] = first < summary[kSummaryMin] ? first : summary[kSummaryMin];
  summary[kSummaryMax] = summary[kSummaryMax] < last ? last : summary[kSummaryMax];
  const double total = summary[kSummaryCount] + static_cast<double>(n_values);
  int64_t n_old = 0;
  while (n_old < capacity && weights[n_old] > 0.0) {
    ++n_old;
  }
  const int64_t n_out = sketch_merge_compress(
      means, weights, n_old, sorted, n_values, total, capacity, scratch_means, scratch_weights);
  for (int64_t j = 0; j < capacity; ++j) {
    means[j] = j < n_out ? scratch_means[j] : 0.0;
    weights[j] = j < n_out ? scratch_weights[j] : 0.0;
  }
  summary[kSummaryCount] = total;
}

}  // namespace lavise_fast
