// Which malloc this binary runs on, for code that tunes it or measures it.
//
// Sanitizer runtimes (ASan, TSan, MSan) replace malloc with their own
// allocator: glibc's mallopt settings and mallinfo2 statistics then say
// nothing about the heap. kGlibcMalloc is true only when glibc's allocator
// serves malloc; code that calls mallopt or reads mallinfo2 checks it first.
#ifndef VQKV_BASE_MALLOC_H_
#define VQKV_BASE_MALLOC_H_

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define VQKV_SANITIZER_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define VQKV_SANITIZER_MALLOC 1
#endif
#endif

namespace vqkv::base {

#if defined(VQKV_SANITIZER_MALLOC)
inline constexpr bool kSanitizerMalloc = true;
#else
inline constexpr bool kSanitizerMalloc = false;
#endif

#if defined(__GLIBC__) && !defined(VQKV_SANITIZER_MALLOC)
inline constexpr bool kGlibcMalloc = true;
#else
inline constexpr bool kGlibcMalloc = false;
#endif

}  // namespace vqkv::base

#endif  // VQKV_BASE_MALLOC_H_
