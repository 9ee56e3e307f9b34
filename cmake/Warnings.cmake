# Warnings are errors for the project's own targets: the build stays clean.
add_library(vqkv_warnings INTERFACE)
target_compile_options(vqkv_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wno-missing-field-initializers>)
