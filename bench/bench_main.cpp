// bench/bench_main.cpp: the C++ benchmark binary. Drives the core without Python.
//
//   fusedrnn_bench --mode lstm --T 100 --N 32 --C 256 --H 256 [--layers 2] [--bidirectional]
//                  [--train] [--batch-first] [--dtype float32|float64] [--repeats 7] [--warmup 2]
//                  [--executor loop|unrolled] [--lengths LO]  (lengths uniform in [LO, T])
//   fusedrnn_bench --grid [--executor ...]   the standard workloads W1-W8 of shared/BENCH.md
//                                            (W6 with its true lengths)
//
// Prints median milliseconds and GFLOP/s. GFLOP/s counts the GEMM work only, as BENCH.md defines it:
// 2*N*(C_in+H)*G*H per step, layer and direction, times 3 when training (forward + backward).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fusedrnn/fusedrnn.h"

using namespace fusedrnn;

namespace {

struct Workload {
  std::string name = "custom";
  Mode mode = Mode::kLstm;
  int64_t T = 50, N = 32, C = 256, H = 256, L = 1;
  bool bidirectional = false, train = false, batch_first = false;
  DType dtype = DType::kFloat32;
  double useful_fraction = 1.0;  // W6: sum of true lengths / (N * T)
  std::vector<int64_t> lengths;  // per-sample lengths (empty: all T)
  ExecutorKind executor = ExecutorKind::kLoop;
  const char* note = "";
};

// Lengths uniform in [lo, T] from a fixed seed; sets the useful fraction.
void set_lengths(Workload& w, int64_t lo) {
  std::mt19937 rng(0);
  std::uniform_int_distribution<int64_t> len(lo, w.T);
  w.lengths.clear();
  double sum = 0;
  for (int64_t i = 0; i < w.N; ++i) {
    w.lengths.push_back(len(rng));
    sum += double(w.lengths.back());
  }
  w.useful_fraction = sum / (double(w.N) * double(w.T));
}

double gemm_flops(const Workload& w) {
  const int64_t G = num_gates(w.mode), D = w.bidirectional ? 2 : 1;
  double f = 0;
  for (int64_t l = 0; l < w.L; ++l) {
    const int64_t cin = l == 0 ? w.C : D * w.H;
    f += double(D) * w.T * 2.0 * w.N * (cin + w.H) * G * w.H;
  }
  return f * (w.train ? 3.0 : 1.0) * w.useful_fraction;
}

template <typename T>
double run(const Workload& w, int repeats, int warmup) {
  RnnDesc d;
  d.mode = w.mode;
  d.input_size = w.C;
  d.hidden_size = w.H;
  d.num_layers = w.L;
  d.bidirectional = w.bidirectional;
  d.dtype = sizeof(T) == 4 ? DType::kFloat32 : DType::kFloat64;
  const Plan plan = make_plan(d, w.T, w.N, w.train, w.lengths, w.executor);
  const int64_t D = d.directions();
  std::mt19937 rng(1234);
  std::normal_distribution<double> normal(0.0, 1.0);
  const double bound = 1.0 / std::sqrt(double(w.H));
  std::uniform_real_distribution<double> uni(-bound, bound);
  std::vector<T> x(w.T * w.N * w.C), weights(param_count(d)), y(w.T * w.N * D * w.H);
  std::vector<T> dy(y.size()), dx(x.size()), dw(weights.size());
  for (auto& v : x) v = T(normal(rng));
  for (auto& v : dy) v = T(normal(rng));
  for (auto& v : weights) v = T(uni(rng));
  std::vector<double> ws((plan.workspace_bytes + 7) / 8), rs((plan.reserve_bytes + 7) / 8);

  // Time-major rows (t, n) or batch-major rows, in place.
  const int64_t xs_t = w.batch_first ? w.C : w.N * w.C, xs_n = w.batch_first ? w.T * w.C : w.C;
  const int64_t ys_t = w.batch_first ? D * w.H : w.N * D * w.H,
                ys_n = w.batch_first ? w.T * D * w.H : D * w.H;
  ForwardArgs f;
  f.x = x.data(), f.x_st = xs_t, f.x_sn = xs_n, f.w = weights.data();
  f.y = y.data(), f.y_st = ys_t, f.y_sn = ys_n;
  f.workspace = ws.data(), f.reserve = rs.data();
  const int64_t* lens = w.lengths.empty() ? nullptr : w.lengths.data();
  f.lengths = lens;
  BackwardDataArgs bd;
  bd.lengths = lens;
  bd.dy = dy.data(), bd.dy_st = ys_t, bd.dy_sn = ys_n, bd.w = weights.data();
  bd.dx = dx.data(), bd.dx_st = xs_t, bd.dx_sn = xs_n, bd.workspace = ws.data(), bd.reserve = rs.data();
  BackwardWeightsArgs bw;
  bw.x = x.data(), bw.x_st = xs_t, bw.x_sn = xs_n, bw.dw = dw.data();
  bw.workspace = ws.data(), bw.reserve = rs.data();
  bw.lengths = lens;

  std::vector<double> times;
  for (int i = 0; i < warmup + repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    forward(plan, f);
    if (w.train) {
      backward_data(plan, bd);
      backward_weights(plan, bw);
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= warmup) times.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times.empty() ? 0.0 : times[times.size() / 2];
}

void report(const Workload& w, int repeats, int warmup) {
  const double ms = w.dtype == DType::kFloat32 ? run<float>(w, repeats, warmup)
                                               : run<double>(w, repeats, warmup);
  const double gflops = ms > 0 ? gemm_flops(w) / (ms * 1e6) : 0.0;
  std::printf("%-4s %-8s T=%-4lld N=%-4lld C=%-4lld H=%-4lld L=%lld %s %-5s %-7s %-8s %10.3f ms %8.1f GFLOP/s %s\n",
              w.name.c_str(), mode_name(w.mode).c_str(), (long long)w.T, (long long)w.N,
              (long long)w.C, (long long)w.H, (long long)w.L, w.bidirectional ? "bi " : "uni",
              w.train ? "train" : "fwd", dtype_name(w.dtype).c_str(),
              executor_name(w.executor).c_str(), ms, gflops, w.note);
  std::fflush(stdout);
}

std::vector<Workload> standard_grid() {
  std::vector<Workload> g;
  auto add = [&](const char* name, Mode m, int64_t T, int64_t N, int64_t C, int64_t H, int64_t L,
                 bool bi, bool train) {
    Workload w;
    w.name = name, w.mode = m, w.T = T, w.N = N, w.C = C, w.H = H, w.L = L;
    w.bidirectional = bi, w.train = train;
    g.push_back(w);
  };
  add("W1", Mode::kLstm, 100, 1, 256, 256, 1, false, false);
  add("W2", Mode::kLstm, 50, 32, 256, 256, 1, false, true);
  add("W3", Mode::kLstm, 100, 64, 512, 512, 1, false, true);
  add("W4", Mode::kGru, 50, 32, 256, 256, 1, false, true);
  add("W5", Mode::kLstm, 40, 128, 57, 128, 1, false, true);
  add("W6", Mode::kLstm, 100, 64, 256, 256, 1, false, true);
  set_lengths(g.back(), 10);  // lengths uniform in [10, 100], fixed seed
  g.back().note = "(lengths in [10, 100]; useful GFLOP/s)";
  add("W7", Mode::kLstm, 100, 32, 256, 256, 2, true, true);
  add("W8", Mode::kLstm, 100, 64, 512, 512, 1, false, false);
  return g;
}

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr, "fusedrnn_bench: %s\nsee the opening comment of bench/bench_main.cpp\n", msg);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  Workload w;
  bool grid = false;
  int repeats = 7, warmup = 2;
  ExecutorKind executor = ExecutorKind::kLoop;
  int64_t lengths_lo = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    auto integer = [&]() -> int64_t {
      const std::string v = value();
      char* end = nullptr;
      const long long r = std::strtoll(v.c_str(), &end, 10);
      if (!end || *end) usage(("not an integer: " + v).c_str());
      return r;
    };
    try {
      if (a == "--grid") grid = true;
      else if (a == "--mode") w.mode = parse_mode(value());
      else if (a == "--dtype") w.dtype = parse_dtype(value());
      else if (a == "--T") w.T = integer();
      else if (a == "--N") w.N = integer();
      else if (a == "--C") w.C = integer();
      else if (a == "--H") w.H = integer();
      else if (a == "--layers") w.L = integer();
      else if (a == "--bidirectional") w.bidirectional = true;
      else if (a == "--train") w.train = true;
      else if (a == "--batch-first") w.batch_first = true;
      else if (a == "--executor") executor = parse_executor(value());
      else if (a == "--lengths") lengths_lo = integer();
      else if (a == "--repeats") repeats = static_cast<int>(integer());
      else if (a == "--warmup") warmup = static_cast<int>(integer());
      else usage(("unknown argument " + a).c_str());
    } catch (const std::exception& e) {
      usage(e.what());
    }
  }
  const BuildInfo b = build_info();
  std::printf("# fusedrnn %s, %s, simd %s, OpenMP threads %d\n", b.version.c_str(), b.blas.c_str(),
              b.simd.c_str(), b.openmp_max_threads);
  try {
    w.executor = executor;
    if (lengths_lo >= 0) set_lengths(w, lengths_lo);
    if (grid) {
      for (Workload& g : standard_grid()) {
        g.executor = executor;
        report(g, repeats, warmup);
      }
    } else {
      report(w, repeats, warmup);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fusedrnn_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
