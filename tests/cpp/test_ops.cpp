// C++ test of the operator library through the dispatcher, against plain ATen
// compositions (run by ctest). Exits non-zero on the first failed check.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "ops/quantile_sketch.h"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) {
    ++failures;
  }
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

bool throws_value_error_naming(const std::function<void()>& f, const std::string& arg) {
  try {
    f();
  } catch (const c10::ValueError& e) {
    return std::string(e.what()).find(arg) != std::string::npos;
  } catch (...) {
    return false;
  }
  return false;
}

void test_registered() {
  for (const char* name : {"lavise_fast::spatial_max_topk", "lavise_fast::attention_pool", "lavise_fast::masked_pool",
                           "lavise_fast::upsample_iou", "lavise_fast::cosine_topk",
                           "lavise_fast::quantile_sketch_update"}) {
    auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
    check(handle.has_value() && handle->hasKernelForDispatchKey(c10::DispatchKey::CPU),
          std::string(name) + " has a CPU kernel");
  }
}

void test_spatial_max_topk() {
  auto f = op<at::Tensor(const at::Tensor&, at::Tensor&, at::Tensor&, int64_t)>("lavise_fast::spatial_max_topk");
  const int64_t C = 5, P = 4;
  auto x = at::randn({23, C, 3, 5});
  auto values = at::full({C, P}, -std::numeric_limits<float>::infinity());
  auto indices = at::full({C, P}, -1, at::kLong);
  for (int64_t start = 0; start < 23; start += 6) {
    const int64_t n = std::min<int64_t>(6, 23 - start);
    f.call(x.narrow(0, start, n), values, indices, start);
  }
  auto maxima = std::get<0>(x.flatten(2).max(2)).t();  // [C, N]
  auto sorted = maxima.sort(1, /*descending=*/true);
  check(at::equal(values, std::get<0>(sorted).narrow(1, 0, P)), "spatial_max_topk values = exact sort");
  check(at::equal(indices, std::get<1>(sorted).narrow(1, 0, P)), "spatial_max_topk indices = exact sort");
  check(throws_value_error_naming([&] { f.call(at::randn({2, C, 3}), values, indices, 0); }, "features"),
        "spatial_max_topk rejects 3-D features, naming them");
}

void test_masked_pool() {
  auto f = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("lavise_fast::masked_pool");
  auto x = at::randn({3, 6, 7, 5});
  auto masks = at::rand({4, 29, 17}) > 0.5;
  auto rows = at::tensor({2, 0, 2, 1}, at::kLong);
  auto got = f.call(x, masks, rows);
  auto resized = at::_upsample_nearest_exact2d(masks.unsqueeze(1).to(at::kFloat), {7, 5}).squeeze(1);
  auto want = (x.index_select(0, rows) * resized.unsqueeze(1)).mean({2, 3});
  check(at::allclose(got, want, 1e-5, 1e-6), "masked_pool = nearest-exact resize + mean");
  check(throws_value_error_naming([&] { f.call(x, masks, at::tensor({0, 1}, at::kLong)); }, "rows"),
        "masked_pool rejects a rows tensor of the wrong length");
}

void test_attention_pool() {
  auto f = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
                         const std::optional<at::Tensor>&)>("lavise_fast::attention_pool");
  auto x = at::randn({3, 6, 4, 5});
  auto rows = at::tensor({0, 2, 2}, at::kLong);
  auto filters = at::tensor({5, 0, 3}, at::kLong);
  auto got = f.call(x, rows, filters, "projection", std::nullopt);
  auto a = x.index({rows, filters});  // [M, H, W]
  auto w = a / a.flatten(1).norm(2, {1}).view({-1, 1, 1});
  auto want = (x.index_select(0, rows) * w.unsqueeze(1)).mean({2, 3});
  check(at::allclose(got, want, 1e-5, 1e-6), "attention_pool projection = a/||a|| weighted mean");
}

void test_upsample_iou() {
  auto f = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 const at::Tensor&)>("lavise_fast::upsample_iou");
  // Integer activations and a 2x upsampling: bilinear weights are 1/4 and 3/4, so every
  // upsampled value is a multiple of 1/16 and thresholds at odd multiples of 1/32 never tie.
  auto act = at::randint(-8, 8, {2, 3, 4, 6}).to(at::kFloat);
  auto thresholds = at::tensor({-1.0f / 32, 3.0f / 32, 33.0f / 32});
  auto masks = at::rand({5, 8, 12}) > 0.5;
  auto rows = at::tensor({1, 0, 1, 1, 0}, at::kLong);
  auto [inter, uni] = f.call(act, thresholds, masks, rows);
  auto up = at::upsample_bilinear2d(act, {8, 12}, /*align_corners=*/false);
  auto on = (up > thresholds.view({1, -1, 1, 1})).index_select(0, rows);
  auto mk = masks.unsqueeze(1);
  check(at::equal(inter, at::logical_and(on, mk).sum({2, 3})), "upsample_iou intersection");
  check(at::equal(uni, at::logical_or(on, mk).sum({2, 3})), "upsample_iou union");
}

void test_cosine_topk() {
  auto f = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>(
      "lavise_fast::cosine_topk");
  auto q = at::randn({9, 16});
  auto keys = at::randn({3001, 16});
  auto [values, indices] = f.call(q, keys, 7);
  auto sims = at::mm(q / q.norm(2, {1}, true), (keys / keys.norm(2, {1}, true)).t());
  auto sorted = sims.sort(/*stable=*/true, 1, /*descending=*/true);
  check(at::allclose(values, std::get<0>(sorted).narrow(1, 0, 7), 1e-5, 1e-6), "cosine_topk values");
  check(at::equal(indices, std::get<1>(sorted).narrow(1, 0, 7)), "cosine_topk indices");
  check(throws_value_error_naming([&] { f.call(q, keys, 3002); }, "k must be at most"), "cosine_topk rejects k > V");
}

void test_quantile_sketch() {
  auto f = op<void(const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, double)>("lavise_fast::quantile_sketch_update");
  const int64_t C = 3, capacity = 256;
  auto means = at::zeros({C, capacity}, at::kDouble);
  auto weights = at::zeros({C, capacity}, at::kDouble);
  auto summary = at::zeros({C, 4}, at::kDouble);
  summary.select(1, 2).fill_(std::numeric_limits<double>::infinity());
  summary.select(1, 3).fill_(-std::numeric_limits<double>::infinity());
  auto x = at::randn({4, C, 3, 3});  // 36 values per channel: every centroid stays a singleton
  f.call(x.narrow(0, 0, 2), means, weights, summary, 0.0);
  f.call(x.narrow(0, 2, 2), means, weights, summary, 0.0);
  auto flat = x.transpose(0, 1).reshape({C, -1}).to(at::kDouble);
  auto sorted = std::get<0>(flat.sort(1));
  check(at::equal(weights.narrow(1, 0, 36), at::ones({C, 36}, at::kDouble)), "sketch keeps singletons");
  check(at::allclose(means.narrow(1, 0, 36), sorted), "sketch singletons are the sorted values");
  check(at::equal(summary.select(1, 0), at::full({C}, 36.0, at::kDouble)), "sketch counts values");
}

// The parallel form of the sketch merge (the CUDA kernel's: starts item by item, centroids from
// each start) against the sequential walk of the CPU kernel, on CPU, over sketches with heavy old
// centroids, values tied with old means, infinities and one-value batches. Bit for bit.
void test_sketch_parallel_form() {
  auto f = op<void(const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, double)>("lavise_fast::quantile_sketch_update");
  int cases = 0, agree = 0;
  for (int64_t capacity : {8, 16, 33, 64}) {
    for (int64_t n_new : {1, 7, 200, 3000}) {
      for (int seed = 0; seed < 3; ++seed) {
        at::manual_seed(seed * 1000 + capacity + n_new);
        auto means = at::zeros({1, capacity}, at::kDouble);
        auto weights = at::zeros({1, capacity}, at::kDouble);
        auto summary = at::zeros({1, 4}, at::kDouble);
        summary.select(1, 2).fill_(std::numeric_limits<double>::infinity());
        summary.select(1, 3).fill_(-std::numeric_limits<double>::infinity());
        // Earlier batches of rounded values: many centroids hold one repeated value, which the new
        // values below then tie with.
        for (int b = 0; b < 1 + seed; ++b) {
          f.call(at::round(at::randn({50 * (b + 1), 1, 2, 2}) * 3), means, weights, summary, 0.0);
        }
        auto values = at::round(at::randn({n_new}) * 3 + (seed == 2 ? 0.5 : 0.0));
        if (n_new > 7) {
          values[0] = std::numeric_limits<float>::infinity();
          values[1] = -std::numeric_limits<float>::infinity();
        }
        values = std::get<0>(values.sort()).contiguous();
        int64_t n_old = 0;
        const double* old_means = means.data_ptr<double>();
        const double* old_weights = weights.data_ptr<double>();
        while (n_old < capacity && old_weights[n_old] > 0) {
          ++n_old;
        }
        const double total = summary[0][0].item<double>() + static_cast<double>(n_new);
        const float* v = values.data_ptr<float>();
        std::vector<double> seq_means(capacity), seq_weights(capacity);
        const int64_t n_seq = lavise_fast::sketch_merge_compress(
            old_means, old_weights, n_old, v, n_new, total, capacity, seq_means.data(), seq_weights.data());

        const int64_t T = n_old + n_new;
        std::vector<double> old_before(n_old + 1, 0.0);
        for (int64_t i = 0; i < n_old; ++i) {
          old_before[i + 1] = old_before[i] + old_weights[i];
        }
        lavise_fast::MergeCursor<float> items{old_means, old_weights, n_old, v, n_new};
        const double delta = lavise_fast::sketch_delta(capacity, total);
        std::vector<int32_t> starts(T);
        for (int64_t k = 0; k < T; ++k) {
          starts[k] = lavise_fast::sketch_item_starts_centroid(items, old_before.data(), k, total, delta);
        }
        std::vector<double> par_means, par_weights;
        for (int64_t k = 0; k < T; ++k) {
          if (starts[k]) {
            double m, w;
            lavise_fast::sketch_centroid_from(items, k, lavise_fast::StartFlags{starts.data(), T}, &m, &w);
            par_means.push_back(m);
            par_weights.push_back(w);
          }
        }
        bool same = static_cast<int64_t>(par_means.size()) == n_seq;
        for (int64_t s = 0; same && s < n_seq; ++s) {
          same = par_weights[s] == seq_weights[s] &&
                 (par_means[s] == seq_means[s] || (std::isnan(par_means[s]) && std::isnan(seq_means[s])));
        }
        ++cases;
        agree += same;
      }
    }
  }
  check(agree == cases, "sketch merge: the parallel form equals the sequential walk (" + std::to_string(agree) +
                            " of " + std::to_string(cases) + " cases)");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_registered();
  test_spatial_max_topk();
  test_masked_pool();
  test_attention_pool();
  test_upsample_iou();
  test_cosine_topk();
  test_quantile_sketch();
  test_sketch_parallel_form();
  std::printf("%d failed\n", failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
