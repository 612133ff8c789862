# Compile options for dmoe's own targets: strict warnings, optional sanitizers. Never pushed onto users.

add_library(dmoe_project_options INTERFACE)
target_compile_options(dmoe_project_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wno-interference-size>)
# dmoe's own builds check the format strings of dmoe's messages at compile time (core/format.hpp); users' builds
# skip that check, which would cost every translation unit that includes the headers.
target_compile_definitions(dmoe_project_options INTERFACE DMOE_CHECK_FORMAT_STRINGS)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  # g++ 12 misreports these in coroutine frames and in Eigen's AVX-512 code at -O2, and -Wrestrict in
  # `"literal" + std::string` when it cannot see how the string was made (GCC bug 105329), -Wstringop-overread in
  # vector::insert of a span it cannot size.
  target_compile_options(dmoe_project_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized -Wno-uninitialized -Wno-array-bounds -Wno-stringop-overflow
                              -Wno-restrict -Wno-stringop-overread>)
endif()
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  target_compile_options(dmoe_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-unknown-warning-option>)
endif()
if(DMOE_NATIVE)
  target_compile_options(dmoe_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
endif()
if(DMOE_SANITIZE)
  # (C++ only: nvcc does not take these, and the CUDA backend's device code is not instrumented)
  target_compile_options(dmoe_project_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer>)
  target_link_options(dmoe_project_options INTERFACE -fsanitize=address,undefined)
endif()

# An executable of dmoe's own: the library, strict warnings and the sanitizers when asked.
# dmoe_add_executable(name [COMPILED] sources...): COMPILED links dmoe::compiled (separate compilation: the heavy
# definitions compiled once for every such program) instead of using the headers alone.
function(dmoe_add_executable name)
  cmake_parse_arguments(arg "COMPILED" "" "" ${ARGN})
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  if(arg_COMPILED)
    target_link_libraries(${name} PRIVATE dmoe::compiled dmoe_project_options)
  else()
    target_link_libraries(${name} PRIVATE dmoe::dmoe dmoe_project_options)
  endif()
endfunction()
