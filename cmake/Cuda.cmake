# CUDA is optional: the project builds and passes its tests without nvcc or a
# GPU. When nvcc exists, the CUDA kernels are built for sm_80 and sm_90 unless
# CMAKE_CUDA_ARCHITECTURES says otherwise.
set(VQKV_HAVE_CUDA OFF)
set(VQKV_HAVE_NCCL OFF)
if(VQKV_ENABLE_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    enable_language(CUDA)
    # CMake 3.25 does not know how to ask nvcc for C++20; the kernels are C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(VQKV_HAVE_CUDA ON)
    message(STATUS "vqkv: CUDA kernels enabled (${CMAKE_CUDA_COMPILER_VERSION}, "
                   "archs ${CMAKE_CUDA_ARCHITECTURES})")
    # NCCL (client/nccl/nccl_kv_channel.h): the toolkit's copy, or one whose
    # prefix NCCL_ROOT names (e.g. pip's nvidia/nccl).
    find_path(VQKV_NCCL_INCLUDE_DIR nccl.h
      HINTS ${NCCL_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS}
      NO_DEFAULT_PATH)
    find_library(VQKV_NCCL_LIBRARY NAMES nccl libnccl.so.2
      HINTS ${NCCL_ROOT}/lib ${CUDAToolkit_LIBRARY_DIR}
            ${CUDAToolkit_LIBRARY_ROOT}/lib ${CUDAToolkit_TARGET_DIR}/lib
      NO_DEFAULT_PATH)
    if(VQKV_NCCL_INCLUDE_DIR AND VQKV_NCCL_LIBRARY)
      set(VQKV_HAVE_NCCL ON)
      add_library(vqkv_nccl_external INTERFACE)
      target_include_directories(vqkv_nccl_external SYSTEM INTERFACE
        ${VQKV_NCCL_INCLUDE_DIR})
      target_link_libraries(vqkv_nccl_external INTERFACE ${VQKV_NCCL_LIBRARY})
      message(STATUS "vqkv: NCCL found (${VQKV_NCCL_LIBRARY})")
    else()
      message(STATUS "vqkv: NCCL not found; no NCCL KV channel")
    endif()
  else()
    message(STATUS "vqkv: nvcc not found, building without CUDA kernels")
  endif()
endif()
