#include "cosine_topk.h"

#include <algorithm>

namespace lavise_fast {

void check_cosine_topk(const at::Tensor& queries, const at::Tensor& keys, int64_t k) {
  check_rank(queries, "queries", 2, "[R, D]");
  check_rank(keys, "keys", 2, "[V, D]");
  check_floating(queries, "queries");
  check_floating(keys, "keys");
  TORCH_CHECK_VALUE(
      queries.size(1) == keys.size(1), "queries and keys must have the same dimension D, got ", queries.size(1),
      " and ", keys.size(1));
  TORCH_CHECK_VALUE(k >= 0, "k must be non-negative, got ", k);
  TORCH_CHECK_VALUE(k <= keys.size(0), "k must be at most the number of keys V = ", keys.size(0), ", got ", k);
  TORCH_CHECK_VALUE(keys.size(0) < (int64_t(1) << 32) - 1, "at most 2^32 - 2 keys are supported, got ", keys.size(0));
  check_same_device(keys, "keys", queries, "queries");
}

int64_t cosine_chunk_size(int64_t rows, int64_t target_elements) {
  return std::clamp<int64_t>(target_elements / std::max<int64_t>(rows, 1), 1024, 65536);
}

}  // namespace lavise_fast
