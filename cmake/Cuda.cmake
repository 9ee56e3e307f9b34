# CUDA is optional: the project builds and passes its tests without nvcc or a
# GPU. When nvcc exists, the CUDA kernels are built for sm_80 and sm_90 unless
# CMAKE_CUDA_ARCHITECTURES says otherwise.
set(VQKV_HAVE_CUDA OFF)
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
  else()
    message(STATUS "vqkv: nvcc not found, building without CUDA kernels")
  endif()
endif()
