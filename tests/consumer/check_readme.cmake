# Checks that README.md's usage example is, byte for byte, tests/consumer/main.cpp,
# which the consumer tests compile and run: so the README's example is known to build.
#   cmake -DREADME=README.md -DSOURCE=tests/consumer/main.cpp -P check_readme.cmake
# The README holds the example as a ```cpp fence between these two marker lines:
#   <!-- example: tests/consumer/main.cpp -->   ...   <!-- end example -->
cmake_minimum_required(VERSION 3.21)

file(READ "${README}" readme)
file(READ "${SOURCE}" source)
set(begin "<!-- example: tests/consumer/main.cpp -->\n```cpp\n")
set(end "```\n<!-- end example -->")
string(FIND "${readme}" "${begin}" b)
string(FIND "${readme}" "${end}" e)
if(b EQUAL -1 OR e EQUAL -1)
  message(FATAL_ERROR "${README}: no example block; expected a ```cpp fence between the lines "
    "'<!-- example: tests/consumer/main.cpp -->' and '<!-- end example -->'")
endif()
string(LENGTH "${begin}" begin_length)
math(EXPR b "${b} + ${begin_length}")
math(EXPR length "${e} - ${b}")
if(length LESS 0)
  message(FATAL_ERROR "${README}: the example's end marker comes before its start")
endif()
string(SUBSTRING "${readme}" ${b} ${length} example)
if(NOT example STREQUAL source)
  file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/readme_example.cpp" "${example}")
  message(FATAL_ERROR "The usage example in ${README} differs from ${SOURCE}; copy one onto the other. "
    "diff: diff ${CMAKE_CURRENT_BINARY_DIR}/readme_example.cpp ${SOURCE}")
endif()
message(STATUS "README example == ${SOURCE}")
