// fastmuon/csrc/parallel.h: independent tasks of one kernel call (e.g. the
// matrices of a batch) run side by side.
#pragma once

#include <functional>

namespace fastmuon::cpu {

// Runs task(0), ..., task(count - 1), concurrently on `count` OpenMP threads
// (one after another in a build without OpenMP, and in a process forked from
// one that loaded this library, where OpenMP cannot start threads), and
// returns when all have finished, rethrowing the first exception one threw.
// count < 1 runs nothing.
//
// Why OpenMP: it is the thread pool torch uses on Linux (libgomp.so.1). With
// torch loaded, the dynamic linker binds this library to torch's libgomp, so
// the tasks run on torch's own idle threads. A pool of our own contended with
// them: right after torch's parallel ops its threads spin, and a step of the
// demo's matrices split over our threads ran 1.8x slower after a
// torch.optim.Muon step than alone, against 1.2-1.4x on torch's threads.
void parallel_tasks(int count, const std::function<void(int)>& task);

} // namespace fastmuon::cpu
