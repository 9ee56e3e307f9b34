// Happens-before edges ThreadSanitizer cannot see on its own: those made by
// synchronization inside uninstrumented libraries. gRPC, for one, runs a
// stream reactor's next callback (OnReadDone after StartRead, OnDone after
// Finish) on another thread after a hand-off through its own atomics, so
// without these edges TSan would report the reactor's members, written
// before the hand-off and read after it, as races.
//
// TsanRelease(p) before the hand-off, TsanAcquire(p) after it, with the same
// address on both sides. No-ops unless built with -fsanitize=thread.
#ifndef VQKV_BASE_TSAN_H_
#define VQKV_BASE_TSAN_H_

#if defined(__SANITIZE_THREAD__)
#define VQKV_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define VQKV_TSAN 1
#endif
#endif

#ifdef VQKV_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace vqkv::base {

#ifdef VQKV_TSAN
inline void TsanRelease(void* addr) { __tsan_release(addr); }
inline void TsanAcquire(void* addr) { __tsan_acquire(addr); }
#else
inline void TsanRelease(void*) {}
inline void TsanAcquire(void*) {}
#endif

}  // namespace vqkv::base

#endif  // VQKV_BASE_TSAN_H_
