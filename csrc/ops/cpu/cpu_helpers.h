// Helpers shared by the CPU kernels.
#pragma once

// Hot loops get an AVX2 clone next to the baseline one, chosen at load time by the
// CPU that runs them, so that the extension stays portable and still uses wide vectors.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LAVISE_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LAVISE_CPU_CLONES
#endif

namespace lavise_fast {

// Eight floats in one vector (GCC/Clang vector extension: AVX in the avx2 clone, two SSE
// registers in the default one).
typedef float float8 __attribute__((vector_size(32)));

}  // namespace lavise_fast
