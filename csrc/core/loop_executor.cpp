// core/loop_executor.cpp: the while-loop executor: (layer, direction) streams one after another,
// each a run-time loop over its steps (engine.h), and backward-weights (shared by both executors).
//
// Forward projects the input in chunks of plan.chunk_t steps (all T when training, written straight
// into the reserve's gate area); backward-data walks each stream's steps in reverse and then gets
// the layer's input gradient from one large GEMM per direction. Backward-weights is large GEMMs and
// column sums only. Nothing allocates: every buffer is a region of the caller's workspace or
// reserve, laid out by make_plan.
#include <cstring>

#include "engine.h"
#include "executor.h"

namespace fusedrnn::loop {

using namespace engine;

template <typename T>
void forward(const Plan& p, const ForwardArgs& a) {
  Forward<T> f(p, a);
  const int64_t T_ = p.T, chunk = p.chunk_t, nchunks = (T_ + chunk - 1) / chunk;
  for (int64_t l = 0; l < f.net.L; ++l) {
    for (int dir = 0; dir < f.net.D; ++dir) {
      f.begin(l, dir, 0);
      for (int64_t ci = 0; ci < nchunks; ++ci) {
        const int64_t k = dir == 0 ? ci : nchunks - 1 - ci;
        f.chunk(l, dir, 0, k * chunk, std::min(T_, (k + 1) * chunk));
      }
      f.end(l, dir, 0);
    }
    f.layer_end(l);
  }
}

template <typename T>
void backward_data(const Plan& p, const BackwardDataArgs& a) {
  BackwardData<T> b(p, a);
  for (int64_t l = b.net.L - 1; l >= 0; --l) {
    for (int dir = 0; dir < b.net.D; ++dir) {
      b.begin(l, dir, 0);
      b.chunk(l, dir, 0, 0, p.T);
      b.end(l, dir, 0);
      b.input_grad(l, dir, 0, 0, p.T);
    }
  }
  b.finish();
}

template <typename T>
void backward_weights(const Plan& p, const BackwardWeightsArgs& a) {
  BackwardWeights<T> b(p, a);
  for (int64_t l = 0; l < b.net.L; ++l)
    for (int dir = 0; dir < b.net.D; ++dir) b.stream(l, dir, 0);
}

template void forward<float>(const Plan&, const ForwardArgs&);
template void forward<double>(const Plan&, const ForwardArgs&);
template void backward_data<float>(const Plan&, const BackwardDataArgs&);
template void backward_data<double>(const Plan&, const BackwardDataArgs&);
template void backward_weights<float>(const Plan&, const BackwardWeightsArgs&);
template void backward_weights<double>(const Plan&, const BackwardWeightsArgs&);

}  // namespace fusedrnn::loop
