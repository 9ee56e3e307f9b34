# Warnings are errors for the project's own targets: the build stays clean.
add_library(vqkv_warnings INTERFACE)
target_compile_options(vqkv_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wno-missing-field-initializers>)
# Clang (the fuzzing build, scripts/fuzz.sh): KvCacheService's raw
# ByteBuffer handlers (service/kv_service.h) share their names with the
# generated typed ones they replace, by design; -Woverloaded-virtual (in
# clang's -Wall, not gcc's) would call that hiding.
target_compile_options(vqkv_warnings INTERFACE
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:Clang>>:-Wno-overloaded-virtual>)
