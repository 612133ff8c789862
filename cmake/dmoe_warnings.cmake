# Compile options for dmoe's own targets: strict warnings, optional sanitizers. Never pushed onto users.

add_library(dmoe_project_options INTERFACE)
target_compile_options(dmoe_project_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wno-interference-size>)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  # g++ 12 misreports these in coroutine frames and in Eigen's AVX-512 code at -O2.
  target_compile_options(dmoe_project_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized -Wno-uninitialized -Wno-array-bounds -Wno-stringop-overflow>)
endif()
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  target_compile_options(dmoe_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-unknown-warning-option>)
endif()
if(DMOE_NATIVE)
  target_compile_options(dmoe_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
endif()
if(DMOE_SANITIZE)
  target_compile_options(dmoe_project_options INTERFACE
    -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_link_options(dmoe_project_options INTERFACE -fsanitize=address,undefined)
endif()

# An executable of dmoe's own: the library, strict warnings and the sanitizers when asked.
function(dmoe_add_executable name)
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE dmoe::dmoe dmoe_project_options)
endfunction()
