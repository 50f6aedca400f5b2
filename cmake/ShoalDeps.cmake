# Third-party libraries, as shoal::* interface targets so that the rest of the build
# does not care whether they come from a CMake package or from bare headers.
# SHOAL_EXTRA_INCLUDE (optional) names a folder of extra headers (the GPU machine has no
# spdlog/fmt/msgpack packages: their Debian headers travel there, used header-only).
set(SHOAL_EXTRA_INCLUDE "" CACHE PATH "folder with extra third-party headers")

find_package(Boost 1.71 REQUIRED)
add_library(shoal::boost INTERFACE IMPORTED)
target_include_directories(shoal::boost INTERFACE ${Boost_INCLUDE_DIRS})
target_link_libraries(shoal::boost INTERFACE rt)
# Boost.Program_options is a compiled library (libboost-program-options-dev), unlike the
# header-only parts above: only shoald's option parsing (supervisor/options.cc) links it.
# SHOAL_EXTRA_LIB (optional) names a folder with a carried libboost_program_options.so for
# hosts with Boost's headers but not that library (the GPU machine): its headers travel in
# SHOAL_EXTRA_INCLUDE/boost/program_options (scripts/gpu.sh makes both).
set(SHOAL_EXTRA_LIB "" CACHE PATH "folder with extra third-party libraries")
find_package(Boost 1.71 QUIET COMPONENTS program_options)
if(NOT TARGET Boost::program_options AND SHOAL_EXTRA_LIB)
  find_library(SHOAL_PROGRAM_OPTIONS_LIB boost_program_options HINTS ${SHOAL_EXTRA_LIB} NO_DEFAULT_PATH)
  if(SHOAL_PROGRAM_OPTIONS_LIB)
    add_library(Boost::program_options UNKNOWN IMPORTED)
    set_target_properties(Boost::program_options PROPERTIES IMPORTED_LOCATION ${SHOAL_PROGRAM_OPTIONS_LIB}
      INTERFACE_INCLUDE_DIRECTORIES ${SHOAL_EXTRA_INCLUDE})
  endif()
endif()
if(NOT TARGET Boost::program_options)
  message(FATAL_ERROR "shoald needs Boost.Program_options: install libboost-program-options-dev "
                      "(scripts/setup.sh does), or carry it (SHOAL_EXTRA_LIB, scripts/gpu.sh)")
endif()

add_library(shoal::msgpack INTERFACE IMPORTED)
find_package(msgpack-cxx QUIET CONFIG)
if(TARGET msgpack-cxx)
  target_link_libraries(shoal::msgpack INTERFACE msgpack-cxx)
else()
  find_path(SHOAL_MSGPACK_INCLUDE msgpack.hpp HINTS ${SHOAL_EXTRA_INCLUDE} REQUIRED)
  target_include_directories(shoal::msgpack INTERFACE ${SHOAL_MSGPACK_INCLUDE})
endif()

add_library(shoal::spdlog INTERFACE IMPORTED)
find_package(spdlog QUIET CONFIG)
if(TARGET spdlog::spdlog)
  target_link_libraries(shoal::spdlog INTERFACE spdlog::spdlog)
else()
  find_path(SHOAL_SPDLOG_INCLUDE spdlog/spdlog.h HINTS ${SHOAL_EXTRA_INCLUDE} REQUIRED)
  target_include_directories(shoal::spdlog INTERFACE ${SHOAL_SPDLOG_INCLUDE})
  target_compile_definitions(shoal::spdlog INTERFACE SPDLOG_HEADER_ONLY FMT_HEADER_ONLY)
endif()

list(APPEND CMAKE_PREFIX_PATH "${SHOAL_TORCH_CMAKE_PREFIX}")
find_package(Torch REQUIRED)

find_package(Catch2 QUIET CONFIG)
