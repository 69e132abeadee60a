# BLIS for SEQNN_USE_BLIS (the matrix-product backend of include/seqnn/kernels/matmul.hpp):
# finds blis.h and libblis and defines the imported target seqnn::blis, which seqnn::seqnn
# links. Read by seqnn's CMakeLists.txt and by the installed seqnnConfig.cmake; sets
# SEQNN_BLIS_FOUND and leaves what to do when BLIS is missing to them. Debian's libblis-dev
# puts blis.h in include/<multiarch>/; -DSEQNN_BLIS_INCLUDE_DIR=... -DSEQNN_BLIS_LIBRARY=...
# point at another build.
if(TARGET seqnn::blis)
  set(SEQNN_BLIS_FOUND TRUE)
  return()
endif()
find_path(SEQNN_BLIS_INCLUDE_DIR blis.h PATH_SUFFIXES x86_64-linux-gnu blis DOC "The folder holding BLIS's blis.h")
find_library(SEQNN_BLIS_LIBRARY blis DOC "BLIS's library (libblis)")
if(SEQNN_BLIS_INCLUDE_DIR AND SEQNN_BLIS_LIBRARY)
  set(SEQNN_BLIS_FOUND TRUE)
  add_library(seqnn::blis UNKNOWN IMPORTED)
  set_target_properties(seqnn::blis PROPERTIES
    IMPORTED_LOCATION "${SEQNN_BLIS_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${SEQNN_BLIS_INCLUDE_DIR}"
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${SEQNN_BLIS_INCLUDE_DIR}")  # blis.h is not -Wpedantic-clean
else()
  set(SEQNN_BLIS_FOUND FALSE)
endif()
