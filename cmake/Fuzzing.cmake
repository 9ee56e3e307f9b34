# -DVQKV_FUZZ=ON: every target is compiled with libFuzzer's coverage
# instrumentation plus ASan and UBSan, and tests/fuzz/ links its targets
# against libFuzzer's main (-fsanitize=fuzzer). Clang only: gcc has no
# libFuzzer. Use a build directory of its own (scripts/fuzz.sh: build-fuzz/).
if(VQKV_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "VQKV_FUZZ=ON needs clang (CC=clang CXX=clang++), "
                        "not ${CMAKE_CXX_COMPILER_ID}")
  endif()
  if(VQKV_SANITIZE)
    message(FATAL_ERROR "VQKV_FUZZ=ON already builds with address,undefined; "
                        "leave VQKV_SANITIZE empty")
  endif()
  message(STATUS "vqkv: fuzzing build (libFuzzer, ASan, UBSan)")
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined
                      -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
