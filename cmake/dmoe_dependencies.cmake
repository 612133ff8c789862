# The Debian 12 packages dmoe needs, and installing the missing ones when asked.
#
# DMOE_INSTALL_DEPS=ON (the presets set it): missing packages are installed with
# apt-get when configuring as root; otherwise configure stops and prints the exact
# apt-get command to run.

# What a user of the headers needs.
set(DMOE_DEBIAN_PACKAGES_LIBRARY
    pkg-config liburing-dev libeigen3-dev libxxhash-dev libfmt-dev libsodium-dev zlib1g-dev)
# What the tests, examples and tools need (the demo trains on Debian's Fashion-MNIST and plots with gnuplot).
set(DMOE_DEBIAN_PACKAGES_DEVELOPMENT
    libboost-test-dev libcli11-dev libbenchmark-dev iproute2 clang-14 libclang-rt-14-dev
    dataset-fashion-mnist gnuplot-nox)
# The peers the benchmarks measure against (never used by the library itself).
set(DMOE_DEBIAN_PACKAGES_BENCHMARK
    libboost-dev libopenblas-dev libopendht-dev python3-torch python3-matplotlib)

function(dmoe_missing_packages out)
  set(missing)
  foreach(package IN LISTS ARGN)
    execute_process(COMMAND dpkg-query -W -f=\${Status} ${package}
                    OUTPUT_VARIABLE status ERROR_QUIET RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0 OR NOT status MATCHES "install ok installed")
      list(APPEND missing ${package})
    endif()
  endforeach()
  set(${out} ${missing} PARENT_SCOPE)
endfunction()

# Makes sure every package named is installed, or stops with the command that installs them.
function(dmoe_ensure_packages)
  find_program(DMOE_DPKG_QUERY dpkg-query)
  if(NOT DMOE_DPKG_QUERY)
    message(STATUS "dmoe: not a Debian system; finding dependencies without installing them")
    return()
  endif()
  dmoe_missing_packages(missing ${ARGN})
  if(NOT missing)
    return()
  endif()
  list(JOIN missing " " missing_text)
  set(command_text "apt-get install -y --no-install-recommends ${missing_text}")
  if(NOT DMOE_INSTALL_DEPS)
    message(STATUS "dmoe: missing Debian packages: ${missing_text} (configure with -DDMOE_INSTALL_DEPS=ON to install them)")
    return()
  endif()
  execute_process(COMMAND id -u OUTPUT_VARIABLE uid OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT uid STREQUAL "0")
    message(FATAL_ERROR "dmoe: missing Debian packages. Run:\n  sudo ${command_text}\nthen configure again.")
  endif()
  message(STATUS "dmoe: installing missing Debian packages: ${missing_text}")
  set(apt_env DEBIAN_FRONTEND=noninteractive)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env ${apt_env} apt-get install -y --no-install-recommends ${missing}
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    # A fresh machine may have stale package lists.
    execute_process(COMMAND ${CMAKE_COMMAND} -E env ${apt_env} apt-get update RESULT_VARIABLE rc_update)
    execute_process(COMMAND ${CMAKE_COMMAND} -E env ${apt_env} apt-get install -y --no-install-recommends ${missing}
                    RESULT_VARIABLE rc)
  endif()
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "dmoe: '${command_text}' failed (exit ${rc})")
  endif()
endfunction()

# Imported targets for the library's own dependencies (also used by dmoeConfig.cmake).
macro(dmoe_find_library_dependencies)
  find_package(PkgConfig REQUIRED)
  find_package(Eigen3 3.4 REQUIRED NO_MODULE)
  find_package(fmt REQUIRED)
  find_package(ZLIB REQUIRED)
  if(NOT TARGET PkgConfig::dmoe_liburing)
    pkg_check_modules(dmoe_liburing REQUIRED IMPORTED_TARGET GLOBAL liburing>=2.3)
    pkg_check_modules(dmoe_xxhash REQUIRED IMPORTED_TARGET GLOBAL libxxhash)
    pkg_check_modules(dmoe_sodium REQUIRED IMPORTED_TARGET GLOBAL libsodium)
  endif()
endmacro()
