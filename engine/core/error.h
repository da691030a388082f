// qforge — errors. Every engine failure is a qf::Error carrying one message that
// names the culprit (file, field, option, layer). The Lua boundary converts it to a
// Lua error; nothing else catches it.
#pragma once
#include <stdexcept>
#include <string>
#include <sstream>

namespace qf {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void cat(std::ostringstream&) {}
template <class T, class... R>
void cat(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  cat(os, rest...);
}
}  // namespace detail

// fail("file ", path, ": truncated") — builds the message from its pieces and throws.
template <class... A>
[[noreturn]] void fail(const A&... parts) {
  std::ostringstream os;
  detail::cat(os, parts...);
  throw Error(os.str());
}

#define QF_CHECK(cond, ...)            \
  do {                                 \
    if (!(cond)) ::qf::fail(__VA_ARGS__); \
  } while (0)

}  // namespace qf
