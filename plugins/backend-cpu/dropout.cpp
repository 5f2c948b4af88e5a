// Dropout on the CPU backend: the mask of every element comes from the
// counter-based RNG (weft/rng.hpp), so forward and backward, recomputation
// and every parallel layout draw the same mask without storing it.
#include <algorithm>

#include "cpu_backend.hpp"
#include "weft/rng.hpp"

namespace weft {

void CpuBackend::dropout(float* x, int64_t b, int64_t t, int64_t c, const DropoutArgs& args) {
  if (!(args.p > 0.f)) return;
  const float keep_scale = 1.f / (1.f - args.p);
  // Rows (sample, position) split over the threads; element index = (t0 + t) * C + c of its sample.
  // A Philox draw per element: chunks of about 4096 elements.
  pool_.parallel_for(b * t, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, c)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bi = r / t, ti = r % t;
      const uint64_t sample = static_cast<uint64_t>(args.first_sample + bi);
      const uint64_t base = static_cast<uint64_t>((args.t0 + ti) * c);
      float* row = x + r * c;
      for (int64_t ci = 0; ci < c; ++ci)
        row[ci] = dropout_keep(args.key, sample, base + static_cast<uint64_t>(ci), args.p) ? row[ci] * keep_scale
                                                                                          : 0.f;
    }
  });
}

}  // namespace weft
