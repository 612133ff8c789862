# dmoe::compiled: separate compilation (see include/dmoe/core/config.hpp). A static library that compiles dmoe's
# heavy definitions once from dmoe_compiled.cpp, and gives every target that links it DMOE_SEPARATE_COMPILATION,
# so their own files see declarations only. Made in the build that uses it, with that build's compiler and flags.
function(dmoe_add_compiled_library source)
  add_library(dmoe_compiled STATIC ${source})
  add_library(dmoe::compiled ALIAS dmoe_compiled)
  target_link_libraries(dmoe_compiled PUBLIC dmoe::dmoe)
  target_compile_definitions(dmoe_compiled PUBLIC DMOE_SEPARATE_COMPILATION)
  # Built only when a target links it: header-only users never pay for it.
  set_target_properties(dmoe_compiled PROPERTIES POSITION_INDEPENDENT_CODE ON EXCLUDE_FROM_ALL ON)
endfunction()
