#include "common.h"

namespace lavise_fast {

void check_rank(const at::Tensor& t, const char* arg, int64_t dim, const char* what) {
  TORCH_CHECK_VALUE(
      t.dim() == dim, arg, " must be a ", dim, "-D tensor ", what, ", got a tensor of shape ", t.sizes());
}

void check_floating(const at::Tensor& t, const char* arg) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(
      s == at::kFloat || s == at::kHalf || s == at::kBFloat16,
      arg, " must be float32, float16 or bfloat16, got ", s);
}

void check_dtype(const at::Tensor& t, const char* arg, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, arg, " must be ", dtype, ", got ", t.scalar_type());
}

void check_same_device(const at::Tensor& t, const char* arg, const at::Tensor& ref, const char* ref_arg) {
  TORCH_CHECK_VALUE(
      t.device() == ref.device(), arg, " must be on the same device as ", ref_arg, " (", ref.device(),
      "), got ", t.device());
}

void check_index_range(const at::Tensor& t, const char* arg, int64_t bound, const char* bound_name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kLong || s == at::kInt, arg, " must be int64 or int32, got ", s);
  if (t.numel() == 0) {
    return;
  }
  auto [lo, hi] = at::aminmax(t);
  const int64_t low = lo.item<int64_t>();
  const int64_t high = hi.item<int64_t>();
  TORCH_CHECK_INDEX(
      low >= 0 && high < bound, arg, " holds values in [", low, ", ", high, "] but must lie in [0, ",
      bound_name, ") = [0, ", bound, ")");
}

void check_mask_dtype(const at::Tensor& t, const char* arg) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(
      s == at::kBool || s == at::kByte || s == at::kFloat || s == at::kHalf || s == at::kBFloat16 ||
          s == at::kDouble,
      arg, " must be bool, uint8 or floating, got ", s);
}

}  // namespace lavise_fast
