// fusedrnn/random.h: the counter-based random numbers behind dropout masks.
//
// Every value is a pure function of (seed, stream, index), so masks do not depend on the thread
// count, the executor or the backend (a CUDA kernel computes the same function), and backward
// regenerates the forward's masks instead of storing them. SplitMix64's finaliser mixes the key.
#pragma once

#include <cstdint>

namespace fusedrnn {

inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The key of one stream; uniform01(seed, stream, i) == uniform01_key(stream_key(seed, stream), i).
inline uint64_t stream_key(uint64_t seed, uint64_t stream) { return mix64(seed ^ mix64(stream)); }

// Uniform in [0, 1) with 24 random bits.
inline float uniform01_key(uint64_t key, uint64_t index) {
  return static_cast<float>(mix64(key + index) >> 40) * 0x1.0p-24f;
}
inline float uniform01(uint64_t seed, uint64_t stream, uint64_t index) {
  return uniform01_key(stream_key(seed, stream), index);
}

// Streams of the dropout masks: one per (layer, direction, kind).
enum class DropoutKind : uint64_t { kInput = 0, kRecurrent = 1 };
inline uint64_t dropout_stream(int64_t layer, int direction, DropoutKind kind) {
  return (static_cast<uint64_t>(layer) * 2 + static_cast<uint64_t>(direction)) * 2 +
         static_cast<uint64_t>(kind);
}

// Streams of the zoneout masks, per (layer, direction, kind), apart from the dropout streams; the
// element of step t, sample n, unit j has index (t*N + n)*H + j. An element keeps its new value when
// its uniform is >= the zoneout probability.
enum class ZoneoutKind : uint64_t { kState = 0, kCell = 1, kOutput = 2 };
inline uint64_t zoneout_stream(int64_t layer, int direction, ZoneoutKind kind) {
  return (uint64_t{1} << 32) + (static_cast<uint64_t>(layer) * 2 + static_cast<uint64_t>(direction)) * 4 +
         static_cast<uint64_t>(kind);
}

}  // namespace fusedrnn
