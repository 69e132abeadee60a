# Builds and runs the consumer project (this folder) against seqnn, as a ctest test.
#   cmake -DMODE=install|subdirectory -DSEQNN_SOURCE_DIR=... -DSEQNN_BINARY_DIR=... -DWORK_DIR=...
#         -DCXX_COMPILER=... -DBUILD_TYPE=... -DUSE_OPENMP=ON|OFF -DGENERATOR=... [-DCXX_FLAGS=...]
#         -P run.cmake
# install:      `cmake --install` the outer build into WORK_DIR/prefix, then find_package(seqnn).
# subdirectory: add_subdirectory(SEQNN_SOURCE_DIR).
# fetchcontent: FetchContent from a source archive of SEQNN_SOURCE_DIR made here (CMakeLists.txt,
#               cmake/, include/, LICENSE: what a consumer's build reads).
cmake_minimum_required(VERSION 3.21)

foreach(var MODE SEQNN_SOURCE_DIR SEQNN_BINARY_DIR WORK_DIR CXX_COMPILER USE_OPENMP GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run)
  string(JOIN " " printable ${ARGN})
  message(STATUS "consumer: ${printable}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer (${MODE}): command failed (${rc}): ${printable}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(consumer_build "${WORK_DIR}/build")
set(args -S "${CMAKE_CURRENT_LIST_DIR}" -B "${consumer_build}" -G "${GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}" "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
  "-DEXPECT_OPENMP=${USE_OPENMP}" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)

if(MODE STREQUAL "install")
  set(prefix "${WORK_DIR}/prefix")
  run("${CMAKE_COMMAND}" --install "${SEQNN_BINARY_DIR}" --prefix "${prefix}")
  if(NOT EXISTS "${prefix}/include/seqnn/seqnn.hpp")
    message(FATAL_ERROR "consumer (install): ${prefix}/include/seqnn/seqnn.hpp was not installed")
  endif()
  run("${CMAKE_COMMAND}" ${args} "-DCMAKE_PREFIX_PATH=${prefix}")
  # It must have found the package just installed, not another copy.
  file(STRINGS "${consumer_build}/CMakeCache.txt" found REGEX "^seqnn_DIR:")
  if(NOT found MATCHES "^seqnn_DIR:[A-Z]+=${prefix}/")
    message(FATAL_ERROR "consumer (install): found seqnn elsewhere: ${found}")
  endif()
elseif(MODE STREQUAL "subdirectory")
  run("${CMAKE_COMMAND}" ${args} "-DSEQNN_SOURCE_DIR=${SEQNN_SOURCE_DIR}" "-DSEQNN_USE_OPENMP=${USE_OPENMP}")
elseif(MODE STREQUAL "fetchcontent")
  set(archive "${WORK_DIR}/seqnn-src.tar.gz")
  file(MAKE_DIRECTORY "${WORK_DIR}")
  execute_process(COMMAND "${CMAKE_COMMAND}" -E tar czf "${archive}" CMakeLists.txt cmake include LICENSE
    WORKING_DIRECTORY "${SEQNN_SOURCE_DIR}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer (fetchcontent): could not archive ${SEQNN_SOURCE_DIR}")
  endif()
  run("${CMAKE_COMMAND}" ${args} "-DSEQNN_URL=${archive}" "-DSEQNN_USE_OPENMP=${USE_OPENMP}")
else()
  message(FATAL_ERROR "run.cmake: MODE must be install, subdirectory or fetchcontent, got '${MODE}'")
endif()

run("${CMAKE_COMMAND}" --build "${consumer_build}")
run("${consumer_build}/app")
