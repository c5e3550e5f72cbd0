// Running C++ with the interpreter lock released, for the dragon_parsl._core
// binding.
#ifndef DRAGON_CLIENT_PYTHON_WITHOUT_GIL_H_
#define DRAGON_CLIENT_PYTHON_WITHOUT_GIL_H_

#include <pybind11/pybind11.h>

#include <exception>
#include <optional>
#include <utility>

namespace dragon::client {

// Runs fn() with the interpreter lock released and returns what it returns.
// Not py::gil_scoped_release: when the interpreter exits while a daemon thread
// waits here (a workflow that ends without shutting its executor down), that
// thread is ended with pthread_exit as it asks for the lock back, and doing so
// inside a destructor, which is noexcept, aborts the whole process
// ("terminate called without an active exception") instead of letting it exit.
template <typename Fn>
auto WithoutGil(Fn&& fn) -> decltype(fn()) {
  using Result = decltype(fn());
  PyThreadState* state = PyEval_SaveThread();
  std::optional<Result> result;
  std::exception_ptr error;
  try {
    result.emplace(fn());
  } catch (...) {
    error = std::current_exception();
  }
  PyEval_RestoreThread(state);  // here, not in a destructor (see above)
  if (error) std::rethrow_exception(error);
  return std::move(*result);
}

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_PYTHON_WITHOUT_GIL_H_
