# Builds and runs tests/consumer/project against dmoe in one of three ways (MODE), in WORK_DIR, which is removed
# afterwards whether the steps pass or fail.
cmake_minimum_required(VERSION 3.25)

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    file(REMOVE_RECURSE ${WORK_DIR})
    list(JOIN ARGN " " command)
    message(FATAL_ERROR "consumer ${MODE}: '${command}' failed (${rc}):\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

set(common -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DDMOE_CUDA=OFF)
set(consumer_args ${common} -DDMOE_CONSUME_MODE=${MODE} -DDMOE_SOURCE_DIR=${DMOE_SOURCE_DIR})

# Separate compilation is proved through the installed package, the path where dmoe::compiled is made from the
# installed source file; the other modes build the header-only program only (each build costs minutes in CI).
set(programs consumer)
if(MODE STREQUAL "find_package")
  list(APPEND programs consumer_separate)
  list(APPEND consumer_args -DDMOE_CONSUME_SEPARATE=ON)
  step(${CMAKE_COMMAND} -S ${DMOE_SOURCE_DIR} -B ${WORK_DIR}/dmoe-build ${common}
       -DDMOE_BUILD_TESTS=OFF -DDMOE_BUILD_EXAMPLES=OFF -DDMOE_BUILD_BENCH=OFF)
  step(${CMAKE_COMMAND} --install ${WORK_DIR}/dmoe-build --prefix ${WORK_DIR}/prefix)
  list(APPEND consumer_args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
  # Where nvcc is, the installed package also makes dmoe::cuda for a project that enables CUDA.
  if(CUDA_COMPILER)
    list(APPEND programs consumer_cuda)
    list(APPEND consumer_args -DDMOE_CONSUME_CUDA=ON -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER})
  endif()
endif()

step(${CMAKE_COMMAND} -S ${PROJECT_DIR} -B ${WORK_DIR}/consumer-build ${consumer_args})
step(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
foreach(program IN LISTS programs)
  step(${WORK_DIR}/consumer-build/${program})
  message(STATUS "${program} ${MODE}: ${step_output}")
  if(program STREQUAL "consumer_cuda")
    if(NOT step_output MATCHES "^cuda backend linked")
      file(REMOVE_RECURSE ${WORK_DIR})
      message(FATAL_ERROR "${program} ${MODE}: unexpected output '${step_output}'")
    endif()
  elseif(NOT step_output MATCHES "answer 42 gemm 11 11")
    file(REMOVE_RECURSE ${WORK_DIR})
    message(FATAL_ERROR "${program} ${MODE}: unexpected output '${step_output}'")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
