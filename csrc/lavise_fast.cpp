// The lavise_fast operator library: every schema, declared once. Kernels are
// registered per device in ops/cpu/*_kernel.cpp and ops/cuda/*_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY(lavise_fast, m) {
  m.def(
      "spatial_max_topk(Tensor features, Tensor(a!) values, Tensor(b!) indices, int base_index) -> Tensor");
  m.def(
      "attention_pool(Tensor features, Tensor rows, Tensor filters, str mode=\"projection\", "
      "Tensor? thresholds=None) -> Tensor");
  m.def("masked_pool(Tensor features, Tensor masks, Tensor rows) -> Tensor");
  m.def("upsample_iou(Tensor activations, Tensor thresholds, Tensor masks, Tensor rows) -> (Tensor, Tensor)");
  m.def("cosine_topk(Tensor queries, Tensor keys, int k) -> (Tensor, Tensor)");
  m.def(
      "quantile_sketch_update(Tensor features, Tensor(a!) means, Tensor(b!) weights, Tensor(c!) summary, "
      "float floor_rank=0.) -> ()");
}
