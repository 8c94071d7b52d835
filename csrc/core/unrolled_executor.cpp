// core/unrolled_executor.cpp: the fully unrolled executor.
//
// The plan holds the whole schedule (Plan::fwd_tasks / bwd_tasks: which steps of which stream, on
// which lane, after which other tasks) and a lane of scratch per (layer, direction) stream, so
// nothing is decided per step and independent streams run at the same time:
// - a bidirectional layer's two directions run side by side (the layer above needs both, so layers
//   follow each other); the input gradient of the two directions is added after both;
// - a unidirectional stack runs as a wavefront of chunks: layer l's chunk k beside layer l+1's chunk
//   k-1, each task projecting its chunk's input and then stepping through it (backward: stepping
//   back through the chunk and then its input gradient, which the layer below waits for);
// - the input gradient of a bidirectional layer is split by time steps across the lanes once both
//   directions are done, and the weight gradients of the streams are spread over the lanes, so a
//   multi-stream network never calls multi-threaded BLAS (whose spinning pool would compete with
//   the lanes).
// Every layer keeps its own output (no ping-pong) and inference projects whole tasks at once, so
// the workspace grows with T (the loop executor's does not).
#include <algorithm>

#include "engine.h"
#include "executor.h"
#include "lanes.h"

namespace fusedrnn::unrolled {

using namespace engine;

namespace {

template <typename Op>
struct Run {
  const Plan& p;
  Op& op;
  int64_t layer = 0;  // whole-layer phases: the layer being run
};

// Whole-layer phase: lane i runs the directions d with d % lanes == i of one layer.
template <typename Op>
void layer_lane(void* ctx, int lane) {
  auto* r = static_cast<Run<Op>*>(ctx);
  const int64_t D = r->p.desc.directions();
  for (int dir = lane; dir < D; dir += r->p.num_lanes) r->op.stream(r->layer, dir);
}

// Wavefront: lane i runs its task list, each task once its dependencies are done.
template <typename Op>
void task_lane(void* ctx, int lane) {
  auto* r = static_cast<Run<Op>*>(ctx);
  std::atomic<int64_t>* done = lanes::done();
  for (const Task& task : r->op.tasks()[lane]) {
    for (const auto& dep : task.deps) lanes::wait_for(done[dep.first], dep.second);
    r->op.task(task);
    done[r->p.reserve_index(task.layer, task.dir)].fetch_add(1, std::memory_order_release);
  }
}

template <typename T>
struct ForwardOp {
  const Plan& p;
  Forward<T>& f;
  int64_t tasks_per_stream;
  const std::vector<std::vector<Task>>& tasks() const { return p.fwd_tasks; }
  void stream(int64_t l, int dir) {
    const int li = static_cast<int>(p.reserve_index(l, dir));
    f.begin(l, dir, li);
    f.chunk(l, dir, li, 0, p.T);
    f.end(l, dir, li);
  }
  void task(const Task& t) {
    const int li = static_cast<int>(p.reserve_index(t.layer, t.dir));
    if (t.index == 0) f.begin(t.layer, t.dir, li);
    f.chunk(t.layer, t.dir, li, t.t0, t.t1);
    if (t.index == tasks_per_stream - 1) f.end(t.layer, t.dir, li);
  }
};

template <typename T>
struct BackwardOp {
  const Plan& p;
  BackwardData<T>& b;
  int64_t tasks_per_stream;
  const std::vector<std::vector<Task>>& tasks() const { return p.bwd_tasks; }
  void stream(int64_t l, int dir) {
    const int li = static_cast<int>(p.reserve_index(l, dir));
    b.begin(l, dir, li);
    b.chunk(l, dir, li, 0, p.T);
    b.end(l, dir, li);
  }
  void task(const Task& t) {
    const int li = static_cast<int>(p.reserve_index(t.layer, t.dir));
    if (t.index == 0) b.begin(t.layer, t.dir, li);
    b.chunk(t.layer, t.dir, li, t.t0, t.t1);
    b.input_grad(t.layer, t.dir, li, t.t0, t.t1);
    if (t.index == tasks_per_stream - 1) b.end(t.layer, t.dir, li);
  }
};

// Whole-layer backward phase: lane i runs its directions of the layer, then, once every direction
// is done, the layer's input gradient for its share of the time steps (all directions, in order).
template <typename T>
void backward_layer_lane(void* ctx, int lane) {
  auto* r = static_cast<Run<BackwardOp<T>>*>(ctx);
  const Plan& p = r->p;
  const int64_t l = r->layer, D = p.desc.directions(), n = p.num_lanes;
  std::atomic<int64_t>* done = lanes::done();
  for (int dir = lane; dir < D; dir += n) {
    r->op.stream(l, dir);
    done[p.reserve_index(l, dir)].fetch_add(1, std::memory_order_release);
  }
  for (int dir = 0; dir < D; ++dir) lanes::wait_for(done[p.reserve_index(l, dir)], 1);
  const int64_t t0 = p.T * lane / n, t1 = p.T * (lane + 1) / n;
  for (int dir = 0; dir < D; ++dir)
    r->op.b.input_grad(l, dir, static_cast<int>(p.reserve_index(l, dir)), t0, t1);
}

// Weight gradients: lane i takes the streams s with s % lanes == i (each writes its own pieces).
template <typename T>
void weights_lane(void* ctx, int lane) {
  auto* b = static_cast<BackwardWeights<T>*>(ctx);
  const Plan& p = b->p;
  for (int64_t l = 0; l < p.desc.num_layers; ++l)
    for (int dir = 0; dir < p.desc.directions(); ++dir) {
      const int64_t si = p.reserve_index(l, dir);
      if (si % p.num_lanes == lane) b->stream(l, dir, static_cast<int>(si));
    }
}

// The plan has task lists exactly for the wavefront (make_plan's schedule()).
bool wavefront(const Plan& p) { return !p.fwd_tasks.empty(); }

int64_t tasks_per_stream(const Plan& p) {
  return p.T == 0 ? 0 : (p.T + p.unroll_chunk - 1) / p.unroll_chunk;
}

}  // namespace

template <typename T>
void forward(const Plan& p, const ForwardArgs& a) {
  Forward<T> f(p, a);
  ForwardOp<T> op{p, f, tasks_per_stream(p)};
  Run<ForwardOp<T>> run{p, op};
  const int64_t streams = p.desc.num_layers * p.desc.directions();
  if (wavefront(p)) {
    lanes::run(p.num_lanes, streams, &task_lane<ForwardOp<T>>, &run);
  } else {
    for (int64_t l = 0; l < p.desc.num_layers; ++l) {
      run.layer = l;
      lanes::run(p.num_lanes, streams, &layer_lane<ForwardOp<T>>, &run);
    }
  }
  f.layer_end(p.desc.num_layers - 1);
}

template <typename T>
void backward_data(const Plan& p, const BackwardDataArgs& a) {
  BackwardData<T> b(p, a);
  BackwardOp<T> op{p, b, tasks_per_stream(p)};
  Run<BackwardOp<T>> run{p, op};
  const int64_t streams = p.desc.num_layers * p.desc.directions();
  if (wavefront(p)) {
    lanes::run(p.num_lanes, streams, &task_lane<BackwardOp<T>>, &run);
  } else {
    for (int64_t l = p.desc.num_layers - 1; l >= 0; --l) {
      run.layer = l;
      lanes::run(p.num_lanes, streams, &backward_layer_lane<T>, &run);
    }
  }
  b.finish();
}

template <typename T>
void backward_weights(const Plan& p, const BackwardWeightsArgs& a) {
  BackwardWeights<T> b(p, a);
  lanes::run(p.num_lanes, p.desc.num_layers * p.desc.directions(), &weights_lane<T>, &b);
}

template void forward<float>(const Plan&, const ForwardArgs&);
template void forward<double>(const Plan&, const ForwardArgs&);
template void backward_data<float>(const Plan&, const BackwardDataArgs&);
template void backward_data<double>(const Plan&, const BackwardDataArgs&);
template void backward_weights<float>(const Plan&, const BackwardWeightsArgs&);
template void backward_weights<double>(const Plan&, const BackwardWeightsArgs&);

}  // namespace fusedrnn::unrolled
