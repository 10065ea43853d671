// Ranked lists shared by spatial_max_topk and cosine_topk: larger value first,
// equal values keep the smaller index first, empty slots (index < 0) last.
#pragma once

#include "common.h"

namespace lavise_fast {

LAVISE_HOST_DEVICE bool ranks_before(float va, int64_t ia, float vb, int64_t ib) {
  if (ib < 0) {
    return ia >= 0;
  }
  if (ia < 0) {
    return false;
  }
  return va > vb || (va == vb && ia < ib);
}

// Inserts (v, i) into the ranked list vals[0..P), idx[0..P) (element j at
// offset j * stride) if it ranks before the last entry. NaN never enters.
LAVISE_HOST_DEVICE void insert_ranked(float* vals, int64_t* idx, int64_t P, int64_t stride, float v, int64_t i) {
  if (P == 0 || v != v || !ranks_before(v, i, vals[(P - 1) * stride], idx[(P - 1) * stride])) {
    return;
  }
  int64_t j = P - 1;
  while (j > 0 && ranks_before(v, i, vals[(j - 1) * stride], idx[(j - 1) * stride])) {
    vals[j * stride] = vals[(j - 1) * stride];
    idx[j * stride] = idx[(j - 1) * stride];
    --j;
  }
  vals[j * stride] = v;
  idx[j * stride] = i;
}

// A 32-bit unsigned key whose integer order is the float order (-inf < ... < +inf).
LAVISE_HOST_DEVICE uint32_t orderable_bits(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

LAVISE_HOST_DEVICE float from_orderable_bits(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

// One int64 per (value, index) whose signed order is the ranking order:
// sorting keys descending gives larger values first, smaller indices first on ties.
// -0 is keyed as +0 (they tie, as in ranks_before); NaN keys above +inf, so callers
// map NaN to an empty slot before keying.
LAVISE_HOST_DEVICE int64_t ranking_key(float v, uint32_t index) {
  v = v == 0.0f ? 0.0f : v;
  const uint64_t key = (static_cast<uint64_t>(orderable_bits(v)) << 32) | (0xffffffffu - index);
  return static_cast<int64_t>(key ^ 0x8000000000000000ull);
}

LAVISE_HOST_DEVICE void decode_ranking_key(int64_t key, float* v, uint32_t* index) {
  const uint64_t k = static_cast<uint64_t>(key) ^ 0x8000000000000000ull;
  *v = from_orderable_bits(static_cast<uint32_t>(k >> 32));
  *index = 0xffffffffu - static_cast<uint32_t>(k & 0xffffffffu);
}

}  // namespace lavise_fast
