// fastmuon/csrc/parallel.cpp: see parallel.h.
#include "parallel.h"

#include <exception>
#include <vector>

namespace fastmuon::cpu {

void parallel_tasks(int count, const std::function<void(int)>& task) {
  if (count < 1) {
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
