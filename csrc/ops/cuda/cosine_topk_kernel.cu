#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../cosine_topk.h"
#include "../ranking.h"
#include "cuda_helpers.h"

namespace lavise_fast {
namespace {

using namespace lavise_fast::cuda;

constexpr int64_t kQueryBlock = 4096;
constexpr int64_t kChunkElements = int64_t(1) << 23;  // 32 MB of float32 similarities per block

// The key of an empty slot (value -inf, index 0xffffffff): below every real key,
// including those of -inf similarities, as an empty slot ranks last.
constexpr uint32_t kEmptyIndex = 0xffffffffu;

// keys[i, j] = ranking_key(sims[i, j] * inv_norm[col0 + j], col0 + j); NaN becomes
// the empty key (NaN never enters, as in insert_ranked), and so do the keys below
// `first` (already seen in an earlier chunk); -0 becomes +0 (they tie in
// insert_ranked). One thread per similarity (grid-stride).
__global__ void ranking_keys_cuda_kernel(
    const float* __restrict__ sims,
    const float* __restrict__ inv_norm,
    int64_t rows,
    int64_t cols,
    int64_t col0,
    int64_t first,
    int64_t empty_key,
    int64_t* __restrict__ keys) {
  LAVISE_CUDA_1D_KERNEL_LOOP(i, rows * cols) {
    const int64_t index = col0 + i % cols;
    const float v = sims[i] * inv_norm[index];
    keys[i] = (v != v || index < first) ? empty_key
                                         : ranking_key(v == 0.0f ? 0.0f : v, static_cast<uint32_t>(index));
  }
}

// values/indices from ranking keys; the empty key gives -inf / -1.
__global__ void decode_keys_cuda_kernel(
    const int64_t* __restrict__ keys,
    int64_t n,
    float* __restrict__ values,
    int64_t* __restrict__ indices) {
  LAVISE_CUDA_1D_KERNEL_LOOP(i, n) {
    float v;
    uint32_t index;
    decode_ranking_key(keys[i], &v, &index);
    const bool empty = index == kEmptyIndex;
    values[i] = empty ? -std::numeric_limits<float>::infinity() : v;
    indices[i] = empty ? int64_t(-1) : static_cast<int64_t>(index);
  }
}

std::tuple<at::Tensor, at::Tensor> cosine_topk_kernel(const at::Tensor& queries, const at::Tensor& keys, int64_t k) {
  check_cosine_topk(queries, keys, k);
  const int64_t R = queries.size(0), V = keys.size(0);
  auto values = at::full({R, k}, -std::numeric_limits<float>::infinity(), queries.options().dtype(at::kFloat));
  auto indices = at::full({R, k}, -1, queries.options().dtype(at::kLong));
  if (R == 0 || k == 0) {
    return {values, indices};
  }
  c10::cuda::CUDAGuard guard(queries.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t empty_key = ranking_key(-std::numeric_limits<float>::infinity(), kEmptyIndex);
  auto q = queries.to(at::kFloat);
  q = q / q.norm(2, {1}, /*keepdim=*/true).clamp_min(kCosineEps);
  auto inv_key_norm = keys.to(at::kFloat).norm(2, {1}).clamp_min(kCosineEps).reciprocal().contiguous();
  const int64_t chunk = cosine_chunk_size(std::min(R, kQueryBlock), kChunkElements);
  for (int64_t r0 = 0; r0 < R; r0 += kQueryBlock) {
    const int64_t rb = std::min(kQueryBlock, R - r0);
    auto qb = q.narrow(0, r0, rb);
    auto best = at::full({rb, k}, empty_key, q.options().dtype(at::kLong));
    for (int64_t v0 = 0; v0 < V; v0 += chunk) {
      // Every product of the block has the same shape, so that cuBLAS computes equal keys
      // alike in every chunk (ties across chunks stay exact): a last, partial chunk is
      // widened backwards over keys of the previous chunk, which it skips.
      const int64_t s = std::max<int64_t>(0, std::min(v0, V - chunk));
      const int64_t vc = std::min(chunk, V - s);
      auto kc = keys.narrow(0, s, vc).to(at::kFloat);
      auto sims = at::mm(qb, kc.t()).contiguous();  // [rb, vc]
      auto chunk_keys = at::empty({rb, vc}, sims.options().dtype(at::kLong));
      ranking_keys_cuda_kernel<<<grid_size(rb * vc), kThreads, 0, stream>>>(
          sims.data_ptr<float>(), inv_key_norm.data_ptr<float>(), rb, vc, s, v0, empty_key,
          chunk_keys.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      auto candidates = std::get<0>(at::topk(chunk_keys, std::min(k, vc), 1, /*largest=*/true, /*sorted=*/true));
      best = std::get<0>(at::topk(at::cat({best, candidates}, 1), k, 1, /*largest=*/true, /*sorted=*/true));
    }
    best = best.contiguous();
    decode_keys_cuda_kernel<<<grid_size(rb * k), kThreads, 0, stream>>>(
        best.data_ptr<int64_t>(), rb * k, values.data_ptr<float>() + r0 * k, indices.data_ptr<int64_t>() + r0 * k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CUDA, m) {
  m.impl("cosine_topk", &cosine_topk_kernel);
}

}  // namespace lavise_fast
