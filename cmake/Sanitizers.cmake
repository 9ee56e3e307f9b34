# -DVQKV_SANITIZE=address,undefined builds everything with ASan and UBSan;
# -DVQKV_SANITIZE=thread with TSan (scripts/tsan.sh: it needs an instrumented
# Abseil).
if(VQKV_SANITIZE)
  message(STATUS "vqkv: building with -fsanitize=${VQKV_SANITIZE}")
  add_compile_options(-fsanitize=${VQKV_SANITIZE} -fno-omit-frame-pointer
                      -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${VQKV_SANITIZE})
endif()
