// fusedrnn/errors.h: the exceptions the core throws.
//
// Library code never aborts or exits on bad input: it throws one of these. The Python bindings turn
// ValueError into Python's ValueError and TypeError into Python's TypeError; a C++ caller can catch
// std::invalid_argument for both. Messages name the argument and give expected vs received values.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace fusedrnn {

class ValueError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class TypeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace fusedrnn

// Throws ExcType with the concatenated message when cond is false.
#define FUSEDRNN_CHECK(cond, ExcType, ...)                                 \
  do {                                                                     \
    if (!(cond)) throw ::fusedrnn::ExcType(::fusedrnn::detail::concat(__VA_ARGS__)); \
  } while (0)
