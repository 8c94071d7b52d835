// fusedrnn/errors.h: the exceptions the core throws.
//
// Library code never aborts or exits on bad input: it throws one of these. The Python bindings turn
// ValueError into Python's ValueError and TypeError into Python's TypeError; a C++ caller can catch
// std::invalid_argument for both. Messages name the argument and give expected vs received values.
#pragma once

#include <cstdio>
#include <type_traits>
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
// Messages are built with std::to_string / snprintf, not iostreams: an ostream's number formatting
// goes through the process's locale facets, which crashed (SIGSEGV) when an extension built with
// one GCC's headers ran in a process whose libstdc++ came from another (seen on a lent GPU machine).
inline void append_one(std::string& s, const std::string& v) { s += v; }
inline void append_one(std::string& s, const char* v) { s += v; }
inline void append_one(std::string& s, char v) { s += v; }
template <typename T>
typename std::enable_if<std::is_integral<T>::value>::type append_one(std::string& s, T v) {
  s += std::to_string(v);
}
template <typename T>
typename std::enable_if<std::is_floating_point<T>::value>::type append_one(std::string& s, T v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
  s += buf;
}
template <typename... Args>
std::string concat(const Args&... args) {
  std::string s;
  (append_one(s, args), ...);
  return s;
}
}  // namespace detail

}  // namespace fusedrnn

// Throws ExcType with the concatenated message when cond is false.
#define FUSEDRNN_CHECK(cond, ExcType, ...)                                 \
  do {                                                                     \
    if (!(cond)) throw ::fusedrnn::ExcType(::fusedrnn::detail::concat(__VA_ARGS__)); \
  } while (0)
