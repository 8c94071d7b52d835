// core/executor.h: the executors behind forward / backward_data / backward_weights.
//
// Arguments arrive validated (api.cpp) and with T, N > 0. Plan::executor says which runs; both
// share the per-stream machinery of engine.h.
#pragma once

#include "fusedrnn/fusedrnn.h"

namespace fusedrnn::loop {
template <typename T>
void forward(const Plan& plan, const ForwardArgs& args);
template <typename T>
void backward_data(const Plan& plan, const BackwardDataArgs& args);
template <typename T>
void backward_weights(const Plan& plan, const BackwardWeightsArgs& args);
}  // namespace fusedrnn::loop

namespace fusedrnn::unrolled {
template <typename T>
void forward(const Plan& plan, const ForwardArgs& args);
template <typename T>
void backward_data(const Plan& plan, const BackwardDataArgs& args);
template <typename T>
void backward_weights(const Plan& plan, const BackwardWeightsArgs& args);
}  // namespace fusedrnn::unrolled
