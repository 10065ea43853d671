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
//
// The floor (CPU kernel; floor_rank in (0, 1)): when a channel's sketch already holds at least
// kFloorMinCount values and the batch brings at least kFloorMinBatch, the values below the floor
// f (the mean of the first old centroid with weight before it >= floor_rank * count) skip the sort:
// they enter as kFloorBins equal-width bins over [min, f) (a value below the old min in bin 0),
// each a weighted item (count, mean of its values), merged with the old centroids before the
// walk. Everything at or above f (and -inf) enters value by value as without a floor.
#pragma once

#include "common.h"

#include <cfloat>

namespace lavise_fast {

constexpr int64_t kSummaryCount = 0;
constexpr int64_t kSummaryNaN = 1;
constexpr int64_t kSummaryMin = 2;
constexpr int64_t kSummaryMax = 3;
constexpr int64_t kSummaryFields = 4;

constexpr int kFloorBins = 128;
constexpr double kFloorMinCount = 16384.0;
constexpr int64_t kFloorMinBatch = 4096;

// features [N, C, H, W] floating; means, weights [C, capacity] float64; summary [C, 4] float64;
// floor_rank 0 (no floor) or in (0, 1).
void check_quantile_sketch(
    const at::Tensor& features,
    const at::Tensor& means,
    const at::Tensor& weights,
    const at::Tensor& summary,
    double floor_rank);

LAVISE_HOST_DEVICE bool is_infinite(double x) {
  return x > DBL_MAX || x < -DBL_MAX;
}

// A channel's floor for one batch (see the top of this file): off unless at > -inf.
struct SketchFloor {
  double at = -DBL_MAX * 2.0, lo = 0.0, scale = 0.0;

  // Whether v enters through a bin: a number below the floor (-inf never does).
  LAVISE_HOST_DEVICE bool below(float v) const {
    return static_cast<double>(v) < at && v >= -FLT_MAX;
  }

  // v's bin: floor((v - lo) * kFloorBins / (at - lo)), clamped to [0, kFloorBins - 1].
  LAVISE_HOST_DEVICE int bin(float v) const {
    const double b = (static_cast<double>(v) - lo) * scale;
    return b < 1.0 ? 0 : (b >= kFloorBins - 1 ? kFloorBins - 1 : static_cast<int>(b));
  }
};

// The floor of a channel (means, weights: its `capacity` centroid slots; summary: its row) for a
// batch of n_batch values; off for floor_rank <= 0, a sketch of fewer than kFloorMinCount values,
// a batch of fewer than kFloorMinBatch, or a floor that is not a number above a finite min.
LAVISE_HOST_DEVICE SketchFloor sketch_floor(
    const double* means,
    const double* weights,
    int64_t capacity,
    const double* summary,
    int64_t n_batch,
    double floor_rank) {
  SketchFloor floor;
  const double count = summary[kSummaryCount], lo = summary[kSummaryMin];
  if (!(floor_rank > 0.0) || count < kFloorMinCount || n_batch < kFloorMinBatch || is_infinite(lo)) {
    return floor;
  }
  double before = 0.0;
  for (int64_t i = 0; i < capacity && weights[i] > 0.0; ++i) {
    if (before >= floor_rank * count) {
      if (!is_infinite(means[i]) && lo < means[i]) {
        floor.at = means[i];
        floor.lo = lo;
        floor.scale = kFloorBins / (means[i] - lo);
      }
      break;
    }
    before += weights[i];
  }
  return floor;
}

// How many of a channel's `capacity` centroid slots are in use (a prefix of positive weights).
LAVISE_HOST_DEVICE int64_t sketch_centroids_used(const double* weights, int64_t capacity) {
  int64_t n = 0;
  while (n < capacity && weights[n] > 0.0) {
    ++n;
  }
  return n;
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

  // Every item with `before + weight / 2` below this is surely in the current bucket (-inf
  // before the first item): operator() returns that bucket for it and changes nothing.
  LAVISE_HOST_DEVICE double surely_below() const {
    return started_ ? end_ * (1.0 - 1e-9) : -DBL_MAX;
  }

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

  // add(m, 1) for each of n > 0 finite values v[0] <= ... <= v[n - 1], in order: the same sums
  // (w * m = m for w = 1, and whole-number weights add exactly), without a test per value.
  template <typename value_t>
  LAVISE_HOST_DEVICE void add_sorted_finite(const value_t* v, int64_t n) {
    same = same && static_cast<double>(v[0]) == first && static_cast<double>(v[n - 1]) == first;
    double total = sum;
    for (int64_t k = 0; k < n; ++k) {
      total += static_cast<double>(v[k]);
    }
    sum = total;
    weight += static_cast<double>(n);
  }

  LAVISE_HOST_DEVICE double mean() const {
    return infinite ? infinity : (same ? first : sum / weight);
  }
};

// The merged sequence of old centroids (sorted by mean; n_old of them) and sorted new values
// (n_new, each of weight 1; on equal values the old centroid comes first), read in order from
// a position (i old, j new items already behind).
template <typename value_t>
struct MergeCursor {
  const double* old_means;
  const double* old_weights;
  int64_t n_old;
  const value_t* values;
  int64_t n_new;
  int64_t i = 0, j = 0;

  LAVISE_HOST_DEVICE bool done() const {
    return i >= n_old && j >= n_new;
  }

  // Whether the next item is an old centroid (old first on ties).
  LAVISE_HOST_DEVICE bool old_comes_next() const {
    return i < n_old && (j >= n_new || old_means[i] <= static_cast<double>(values[j]));
  }

  // The next item's mean and weight; the cursor moves past it.
  LAVISE_HOST_DEVICE void next(double* mean, double* weight) {
    if (old_comes_next()) {
      *mean = old_means[i];
      *weight = old_weights[i];
      ++i;
    } else {
      *mean = static_cast<double>(values[j]);
      *weight = 1.0;
      ++j;
    }
  }

  // Moves to item k (0 <= k <= n_old + n_new) without walking: the number i of old centroids
  // among the first k items is the smallest i in [max(0, k - n_new), min(k, n_old)] for which
  // old centroid i does not come before new value k - i - 1 (a merge path's binary search).
  LAVISE_HOST_DEVICE void seek(int64_t k) {
    int64_t lo = k > n_new ? k - n_new : 0, hi = k < n_old ? k : n_old;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (old_means[mid] <= static_cast<double>(values[k - mid - 1])) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    i = lo;
    j = k - lo;
  }
};

// How many new values come next in the merged sequence (before the next old centroid) with
// `before + 1/2` below `limit`, `before` counting one per value from the cursor's `before`. All
// weights are whole numbers, so each value's `before` is exact, as in the walk one by one.
template <typename value_t>
LAVISE_HOST_DEVICE int64_t new_values_in_bucket(const MergeCursor<value_t>& items, double before, double limit) {
  const int64_t left = items.n_new - items.j;
  const double room = limit - before - 0.5;
  if (left <= 0 || !(room > 0.0)) {
    return 0;
  }
  int64_t count = room < static_cast<double>(left) ? static_cast<int64_t>(room) + 1 : left;
  while (count > 0 && !(before + static_cast<double>(count - 1) + 0.5 < limit)) {
    --count;  // the formula's rounding, corrected against the walk's own test
  }
  while (count < left && before + static_cast<double>(count) + 0.5 < limit) {
    ++count;
  }
  if (items.i < items.n_old) {  // stop at the first value >= the next old mean (it comes first on ties)
    const double old_mean = items.old_means[items.i];
    int64_t lo = 0, hi = count;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (static_cast<double>(items.values[items.j + mid]) < old_mean) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    count = lo;
  }
  return count;
}

// Merges old centroids with sorted new values (see MergeCursor) and writes the compressed
// centroids to out_means/out_weights. Returns their count. `total` is the weight of
// everything (old + new). Sequential: one walk, the CPU kernel's.
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
  MergeCursor<value_t> items{old_means, old_weights, n_old, values, n_new};
  int64_t n_out = -1;
  double before = 0.0, bucket = 0.0;
  OpenCentroid open;
  while (!items.done()) {
    // A run of new values that surely joins the open centroid joins it at once (none when an
    // old centroid comes next: asking would only find that).
    if (n_out >= 0 && !items.old_comes_next()) {
      const int64_t run = new_values_in_bucket(items, before, bucket_of.surely_below());
      if (run > 1 && !is_infinite(static_cast<double>(values[items.j])) &&
          !is_infinite(static_cast<double>(values[items.j + run - 1]))) {
        open.add_sorted_finite(values + items.j, run);
        items.j += run;
        before += static_cast<double>(run);  // whole numbers: exact, as one by one
        continue;
      }
    }
    double m, w;
    items.next(&m, &w);
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

// The same merge in parallel form, item by item (the CUDA kernel's): with old_before[i] the
// weight of the first i old centroids, item k of the merged sequence sits at
// before = old_before[i] + j (i old, j new items ahead of it, by MergeCursor::seek), and
// starts a centroid when its sketch_bucket differs from item k - 1's (or k = 0). The
// centroids are then summed item by item from each start (sketch_centroid_from), in the
// order of the sequential walk, so both forms give the same centroids bit for bit.
template <typename value_t>
LAVISE_HOST_DEVICE bool sketch_item_starts_centroid(
    MergeCursor<value_t> items,
    const double* old_before,
    int64_t k,
    double total,
    double delta) {
  double m, w;
  items.seek(k);
  const double before = old_before[items.i] + static_cast<double>(items.j);
  items.next(&m, &w);
  const double bucket = sketch_bucket(before, w, total, delta);
  if (k == 0) {
    return true;
  }
  items.seek(k - 1);
  const double previous_before = old_before[items.i] + static_cast<double>(items.j);
  items.next(&m, &w);
  return sketch_bucket(previous_before, w, total, delta) != bucket;
}

// Whether item k starts a centroid, read from a row of flags (0/1) of the items before `end`;
// every position from `end` on counts as a start (nothing runs past the last item).
struct StartFlags {
  const int32_t* row;
  int64_t end;

  LAVISE_HOST_DEVICE bool operator()(int64_t k) const {
    return k >= end || row[k] != 0;
  }
};

// The centroid that starts at item k and runs to the item before the next start
// (is_start(k') true) or the end: its mean and weight.
template <typename value_t, typename IsStart>
LAVISE_HOST_DEVICE void sketch_centroid_from(
    MergeCursor<value_t> items,
    int64_t k,
    IsStart is_start,
    double* mean,
    double* weight) {
  double m, w;
  items.seek(k);
  items.next(&m, &w);
  OpenCentroid open;
  open.start(m, w);
  for (int64_t next = k + 1; !items.done() && !is_start(next); ++next) {
    items.next(&m, &w);
    open.add(m, w);
  }
  *mean = open.mean();
  *weight = open.weight;
}

// Folds one channel's batch into its sketch: counts n_nan NaN, updates the summary row
// (count, nan_count, min, max) and merges the n_values sorted numbers and n_binned numbers
// below the floor (their least: binned_min) into the centroid rows (means, weights: `capacity`
// slots, unused ones of weight 0) through the scratch rows. The walk's old items are
// items_means/items_weights (n_items of them: the old centroids, with the bins merged in when
// n_binned > 0). A channel with no number keeps its centroids as they were.
LAVISE_HOST_DEVICE void sketch_update_channel_with(
    const float* sorted,
    int64_t n_values,
    int64_t n_nan,
    int64_t n_binned,
    double binned_min,
    int64_t capacity,
    const double* items_means,
    const double* items_weights,
    int64_t n_items,
    double* means,
    double* weights,
    double* summary,
    double* scratch_means,
    double* scratch_weights) {
  summary[kSummaryNaN] += static_cast<double>(n_nan);
  if (n_values + n_binned == 0) {
    return;
  }
  double least = binned_min;
  if (n_values > 0) {
    const double first = static_cast<double>(sorted[0]);
    const double last = static_cast<double>(sorted[n_values - 1]);
    least = first < least ? first : least;
    summary[kSummaryMax] = summary[kSummaryMax] < last ? last : summary[kSummaryMax];
  }
  summary[kSummaryMin] = least < summary[kSummaryMin] ? least : summary[kSummaryMin];
  const double total = summary[kSummaryCount] + static_cast<double>(n_values + n_binned);
  const int64_t n_out = sketch_merge_compress(
      items_means, items_weights, n_items, sorted, n_values, total, capacity, scratch_means, scratch_weights);
  for (int64_t j = 0; j < capacity; ++j) {
    means[j] = j < n_out ? scratch_means[j] : 0.0;
    weights[j] = j < n_out ? scratch_weights[j] : 0.0;
  }
  summary[kSummaryCount] = total;
}

// sketch_update_channel_with without a floor: the old centroids are the walk's old items.
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
  const int64_t n_old = sketch_centroids_used(weights, capacity);
  sketch_update_channel_with(sorted, n_values, n_nan, 0, DBL_MAX * 2.0, capacity, means, weights, n_old, means,
                             weights, summary, scratch_means, scratch_weights);
}

}  // namespace lavise_fast
