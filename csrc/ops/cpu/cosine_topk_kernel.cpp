#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../cosine_topk.h"
#include "../ranking.h"

namespace lavise_fast {
namespace {

constexpr int64_t kQueryBlock = 512;
constexpr int64_t kChunkElements = int64_t(1) << 21;  // 8 MB of float32 similarities per block

std::tuple<at::Tensor, at::Tensor> cosine_topk_kernel(const at::Tensor& queries, const at::Tensor& keys, int64_t k) {
  check_cosine_topk(queries, keys, k);
  const int64_t R = queries.size(0), V = keys.size(0);
  auto values = at::full({R, k}, -std::numeric_limits<float>::infinity(), queries.options().dtype(at::kFloat));
  auto indices = at::full({R, k}, -1, queries.options().dtype(at::kLong));
  if (R == 0 || k == 0) {
    return {values, indices};
  }
  auto q = queries.to(at::kFloat);
  q = q / q.norm(2, {1}, /*keepdim=*/true).clamp_min(kCosineEps);
  auto inv_key_norm = keys.to(at::kFloat).norm(2, {1}).clamp_min(kCosineEps).reciprocal();
  float* vals = values.data_ptr<float>();
  int64_t* idx = indices.data_ptr<int64_t>();
  const int64_t chunk = cosine_chunk_size(std::min(R, kQueryBlock), kChunkElements);
  for (int64_t r0 = 0; r0 < R; r0 += kQueryBlock) {
    const int64_t rb = std::min(kQueryBlock, R - r0);
    auto qb = q.narrow(0, r0, rb);
    for (int64_t v0 = 0; v0 < V; v0 += chunk) {
      const int64_t vc = std::min(chunk, V - v0);
      auto kc = keys.narrow(0, v0, vc).to(at::kFloat);
      auto sims = at::mm(qb, kc.t()).mul_(inv_key_norm.narrow(0, v0, vc)).contiguous();  // [rb, vc]
      const float* s = sims.data_ptr<float>();
      at::parallel_for(0, rb, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          float* rv = vals + (r0 + i) * k;
          int64_t* ri = idx + (r0 + i) * k;
          const float* si = s + i * vc;
          for (int64_t j = 0; j < vc; ++j) {
            // Fast rejection: keys arrive in increasing index order, so a tie never displaces.
            if (ri[k - 1] >= 0 && !(si[j] > rv[k - 1])) {
              continue;
            }
            insert_ranked(rv, ri, k, 1, si[j], v0 + j);
          }
        }
      });
    }
  }
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CPU, m) {
  m.impl("cosine_topk", &cosine_topk_kernel);
}

}  // namespace lavise_fast
