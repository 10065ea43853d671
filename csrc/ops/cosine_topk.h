// cosine_topk: the k keys of largest cosine similarity for every query.
//   sim[r, v] = <q_r, k_v> / (max(|q_r|, eps) * max(|k_v|, eps)),  eps = 1e-12 (as F.normalize)
//   values[r, :] = the k largest sim[r, :], descending, ties to the smaller key index.
// Keys are scanned in chunks, so the R x V similarity matrix is never materialised.
#pragma once

#include "common.h"

namespace lavise_fast {

constexpr double kCosineEps = 1e-12;

// queries [R, D] floating; keys [V, D] floating; 0 <= k <= V.
void check_cosine_topk(const at::Tensor& queries, const at::Tensor& keys, int64_t k);

// Keys per chunk for a block of `rows` queries: big enough for an efficient matrix
// product, small enough that a chunk of similarities stays near `target_elements`.
int64_t cosine_chunk_size(int64_t rows, int64_t target_elements);

}  // namespace lavise_fast
