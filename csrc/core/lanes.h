// core/lanes.h: the unrolled executor's lanes: a persistent pool of worker threads, started once,
// that runs one function per lane concurrently (lane 0 on the calling thread).
#pragma once

#include <atomic>
#include <cstdint>

namespace fusedrnn::lanes {

// Runs fn(ctx, lane) for every lane in [0, n), concurrently, and returns when all have returned.
// While the lanes run, BLAS is single-threaded (each lane is one core's worth of work); the previous
// thread count is restored after. One run at a time per process (a second caller waits). `streams`
// counters (tasks done per stream) are zeroed before the lanes start and passed to fn via done().
void run(int n, int64_t streams, void (*fn)(void* ctx, int lane), void* ctx);

// The counters of the current run: tasks completed per stream.
std::atomic<int64_t>* done();

// Waits (spinning, then yielding) until counter >= value.
void wait_for(const std::atomic<int64_t>& counter, int64_t value);

}  // namespace fusedrnn::lanes
