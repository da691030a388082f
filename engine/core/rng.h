// qforge — the run's random numbers: an explicit object, never global state.
//
// xoshiro256** (Blackman & Vigna) seeded through splitmix64. Every derived draw is
// defined here bit for bit (no std::*_distribution, whose outputs differ between
// standard libraries), so a seed gives the same stream on every platform.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/error.h"

namespace qf {

inline uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A counter-based uniform draw in [0, 1): a pure function of (key, index), so a draw does not
// depend on which thread makes it or in what order (stochastic rounding inside parallel loops).
inline double counter_uniform(uint64_t key, uint64_t index) {
  uint64_t x = key ^ (index * 0xd1b54a32d192ed03ull);
  splitmix64(x);
  return (double)(splitmix64(x) >> 11) * 0x1.0p-53;
}

// A 64-bit key from a seed and a layer's (block, name): independent draws per layer.
inline uint64_t layer_key(uint64_t seed, int block, const char* name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the name
  for (const char* c = name; c && *c; ++c) h = (h ^ (uint8_t)*c) * 1099511628211ull;
  uint64_t x = seed ^ (h + 0x9e3779b97f4a7c15ull * (uint64_t)(block + 1));
  return splitmix64(x);
}

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) {
    uint64_t x = seed;
    for (auto& w : s_) w = splitmix64(x);
  }
  uint64_t next_u64() {
    const uint64_t r = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return r;
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return (double)(next_u64() >> 11) * 0x1.0p-53; }
  // Uniform integer in [lo, hi], unbiased (rejection on the top of the range).
  int64_t randint(int64_t lo, int64_t hi) {
    if (hi < lo) fail("randint: empty range [", lo, ", ", hi, "]");
    const uint64_t span = (uint64_t)hi - (uint64_t)lo + 1;  // 0 means the full 2^64 range
    if (span == 0) return (int64_t)next_u64();
    const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t v;
    do v = next_u64(); while (v >= limit);
    return (int64_t)((uint64_t)lo + v % span);
  }
  // Standard normal by Box–Muller (both values used).
  double normal() {
    if (has_spare_) { has_spare_ = false; return spare_; }
    double u1;
    do u1 = uniform(); while (u1 <= 0.0);
    const double u2 = uniform(), r = std::sqrt(-2.0 * std::log(u1)), a = 6.283185307179586 * u2;
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace qf
