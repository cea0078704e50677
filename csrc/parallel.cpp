// fastmuon/csrc/parallel.cpp: see parallel.h.
#include "parallel.h"

#include <atomic>
#include <exception>
#include <vector>

#if !defined(_WIN32)
#include <pthread.h>
#endif

namespace fastmuon::cpu {

namespace {

// libgomp cannot start threads in a child forked after the parent used them
// (the child hangs, as torch's own parallel ops do there), so a forked child
// runs the tasks one after another. A child that execs starts afresh.
std::atomic<bool> forked_child{false};

#if !defined(_WIN32)
const int fork_handler_registered = pthread_atfork(
    nullptr, nullptr, [] { forked_child.store(true); });
#endif

} // namespace

void parallel_tasks(int count, const std::function<void(int)>& task) {
  if (count < 1) {
    return;
  }
  if (count == 1 || forked_child.load()) {
    for (int i = 0; i < count; ++i) {
      task(i);
    }
    return;
  }
  // An exception must not leave an OpenMP region: each task's is kept.
  std::vector<std::exception_ptr> errors(static_cast<size_t>(count));
#pragma omp parallel for num_threads(count) schedule(static, 1)
  for (int i = 0; i < count; ++i) {
    try {
      task(i);
    } catch (...) {
      errors[static_cast<size_t>(i)] = std::current_exception();
    }
  }
  for (auto& e : errors) {
    if (e) {
      std::rethrow_exception(e);
    }
  }
}

} // namespace fastmuon::cpu
