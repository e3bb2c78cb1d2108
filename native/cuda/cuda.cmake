# The CUDA backend (native/cuda/), an optional part included by CMakeLists.txt.
#
#   -DEMBEDLOOKUP_CUDA=AUTO  (default) build it when nvcc is found
#   -DEMBEDLOOKUP_CUDA=ON    require it (configure fails without nvcc)
#   -DEMBEDLOOKUP_CUDA=OFF   never build it
#
# Code is generated for an explicit architecture list (sm_80, sm_90 by
# default; override with -DCMAKE_CUDA_ARCHITECTURES=...), never `native`, so a
# build made on a machine without a GPU (CI) runs on A100 and H100 class GPUs.
# The CUDA runtime is linked statically: the module still imports where no
# driver is installed, and reports "no GPU" only when a CUDA table is made.
set(EMBEDLOOKUP_CUDA AUTO CACHE STRING "Build the CUDA backend: AUTO (when nvcc is found), ON or OFF")
set_property(CACHE EMBEDLOOKUP_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${EMBEDLOOKUP_CUDA}" _el_cuda_mode)

set(_el_cuda_enabled FALSE)
if(NOT _el_cuda_mode STREQUAL "OFF")
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
    set(CMAKE_CUDA_ARCHITECTURES "80;90")
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(_el_cuda_enabled TRUE)
  elseif(_el_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "EMBEDLOOKUP_CUDA=ON but no CUDA compiler (nvcc) was found; put nvcc on PATH or set CUDACXX")
  endif()
endif()
set(EMBEDLOOKUP_CUDA_ENABLED ${_el_cuda_enabled} CACHE INTERNAL "Whether the CUDA backend is built")

if(_el_cuda_enabled)
  message(STATUS "embedlookup: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  add_library(embedlookup_cuda STATIC
    native/cuda/cuda_table.cpp
    native/cuda/index_cuda.cu
    native/cuda/pool_cuda.cu
    native/cuda/pool_raw_cuda.cu
    native/cuda/update_cuda.cu
    native/cuda/cache_cuda.cu)
  target_include_directories(embedlookup_cuda PUBLIC native/include)
  set_target_properties(embedlookup_cuda PROPERTIES
    POSITION_INDEPENDENT_CODE ON
    CXX_VISIBILITY_PRESET hidden
    CUDA_VISIBILITY_PRESET hidden
    CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}"
    CUDA_RUNTIME_LIBRARY Static)
  target_compile_options(embedlookup_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-O3 -Wall -Wextra>
    $<$<COMPILE_LANGUAGE:CUDA>:-O3 -Xcompiler=-Wall>)
  target_link_libraries(embedlookup_cuda PUBLIC CUDA::cudart_static)
  target_sources(_core PRIVATE native/bindings/bind_cuda.cpp)
  target_link_libraries(_core PRIVATE embedlookup_cuda)
  target_compile_definitions(_core PRIVATE EMBEDLOOKUP_WITH_CUDA)
else()
  message(STATUS "embedlookup: CUDA backend OFF (EMBEDLOOKUP_CUDA=${EMBEDLOOKUP_CUDA})")
endif()
