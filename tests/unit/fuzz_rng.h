/* The differential fuzz tests' generator: xorshift64*, seeded from the environment so that a
 * failure can be replayed, and sized from it so that benchmarks can run the tests far longer. */
#ifndef EXTPROC_TEST_FUZZ_RNG_H
#define EXTPROC_TEST_FUZZ_RNG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static uint64_t rng_state;

/* A number in [0, n); 0 when n is 0. */
static inline uint32_t rnd(uint32_t n) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return n ? (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 33) % n : 0;
}

static inline bool chance(uint32_t percent) { return rnd(100) < percent; }

/* The environment variable `name` as a number, or `fallback` when unset or empty. */
static inline size_t env_size(const char *name, size_t fallback) {
  const char *v = getenv(name);
  return v && *v ? (size_t)strtoull(v, NULL, 10) : fallback;
}

#endif
