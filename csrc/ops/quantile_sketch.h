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

// Where the buckets of sketch_bucket change, walked upwards without a logarithm. Bucket b
// holds the items whose `before + weight / 2` lies below t(b) = total / (1 + e(b)) with
// e(b) = exp(-(b + 1) / delta), the exact point where delta * logit(q) reaches b + 1; the next
// bucket's e is e(b) * exp(-1 / delta). An item counts as surely in bucket b below
// t(b) (1 - 1e-9) and surely in b + 1 between t(b) (1 + 1e-9) and t(b + 1) (1 - 1e-9): that
// margin is far more than the rounding of either computation (and of ~10^4 products of e).
// Anything else, a jump over several buckets or a point within the margin, takes the
// logarithm of sketch_bucket, so the buckets are exactly sketch_bucket's.
class BucketWalk {
 public:
  LAVISE_HOST_DEVICE BucketWalk(double total, double delta)
      : total_(total), delta_(delta), step_(exp(-1.0 / delta)) {}

  // The bucket of an item at `before` of weight `weight`; items come in ascending order.
  LAVISE_HOST_DEVICE double operator()(double before, double weight) {
    const double below = before + 0.5 * weight;
    if (started_ && below < end_ * (1.0 - 1e-9)) {
      return bucket_;
    }
    if (started_) {
      const double next_e = e_ * step_;
      const double next_end = total_ / (1.0 + next_e);
      if (below >= end_ * (1.0 + 1e-9) && below < next_end * (1.0 - 1e-9)) {
        bucket_ += 1.0;
        e_ = next_e;
        end_ = next_end;
        return bucket_;
      }
    }
    started_ = true;
    bucket_ = sketch_bucket(before, weight, total_, delta_);
    e_ = exp(-(bucket_ + 1.0) / delta_);
    end_ = total_ / (1.0 + e_);
    return bucket_;
  }

 private:
  double total_, delta_, step_;
  double bucket_ = 0.0, e_ = 0.0, end_ = 0.0;
  bool started_ = false;
};

// The centroid being built by sketch_merge_compress: its weight, the sum of weight * mean of
// its finite members, its first member's mean and whether every member has that mean, and its
// first infinity. Its mean is that infinity if any (a centroid holding an infinity stays
// infinite), else the shared mean when all members agree (exact: a constant channel keeps its
// constant), else sum / weight. No division per member: the sums are plain additions.
struct OpenCentroid {
  double weight = 0.0, sum = 0.0, first = 0.0, infinity = 0.0;
  bool same = true, infinite = false;

  LAVISE_HOST_DEVICE void start(double m, double w) {
    weight = 0.0;
    sum = 0.0;
    first = m;
    same = true;
    infinite = false;
    add(m, w);
  }

  LAVISE_HOST_DEVICE void add(double m, double w) {
    weight += w;
    same = same && m == first;
    if (is_infinite(m)) {
      infinity = infinite ? infinity : m;
      infinite = true;
    } else {
      sum += w * m;
    }
  }

  LAVISE_HOST_DEVICE double mean() const {
    return infinite ? infinity : (same ? first : sum / weight);
  }
};

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
  BucketWalk bucket_of(total, sketch_delta(capacity, total));
  int64_t i = 0, j = 0, n_out = -1;
  double before = 0.0, bucket = 0.0;
  OpenCentroid open;
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
    const double b = bucket_of(before, w);
    if (n_out >= 0 && b == bucket) {
      open.add(m, w);
    } else {
      if (n_out >= 0) {
        out_means[n_out] = open.mean();
        out_weights[n_out] = open.weight;
      }
      ++n_out;
      bucket = b;
      open.start(m, w);
    }
    before += w;
  }
  if (n_out >= 0) {
    out_means[n_out] = open.mean();
    out_weights[n_out] = open.weight;
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
