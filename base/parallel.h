// Fork-join over a few threads, for work split into `n` parts that each
// take long enough to be worth a thread (decoding a layer of many blocks,
// a round of blocks): RunParts(n, fn) calls fn(0) .. fn(n - 1), fn(0) on the
// calling thread and the others on threads of their own, and returns when
// every call has returned. n <= 1 runs fn(0) inline and starts no thread.
//
// fn must be safe to call concurrently with different parts and must not
// throw. Threads are started per call: meant for parts of a millisecond or
// more, not for fine-grained loops.
#ifndef VQKV_BASE_PARALLEL_H_
#define VQKV_BASE_PARALLEL_H_

#include <thread>
#include <vector>

namespace vqkv::base {

template <typename Fn>
void RunParts(int n, const Fn& fn) {
  std::vector<std::thread> others;
  if (n > 1) others.reserve(n - 1);
  for (int part = 1; part < n; ++part) {
    others.emplace_back([&fn, part] { fn(part); });
  }
  fn(0);
  for (std::thread& t : others) t.join();
}

}  // namespace vqkv::base

#endif  // VQKV_BASE_PARALLEL_H_
