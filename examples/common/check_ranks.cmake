# Checks that char_lm with --reduce ordered and a fixed --shards prints the same training
# and validation losses, bit for bit, on 1, 2, 3 and 4 ranks, and the same validation
# losses when the run is cut into one-step pieces (--time-limit 1e-9, then --resume) that
# each run on another rank count.
#   cmake -DMPIEXEC=mpiexec -DNP_FLAG=-n "-DMPI_FLAGS=--oversubscribe" -DPROGRAM=char_lm
#         "-DARGS=--steps;6;...;--reduce;ordered;--shards;4" -DCHECKPOINT=path -P check_ranks.cmake
function(loss_lines output result)  # "step N  train X  val Y  ..." -> "N train X val Y", one per evaluation
  string(REGEX MATCHALL "step +[0-9]+ +(train [0-9.]+ +)?val [0-9.]+" lines "${output}")
  set(out "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE " +" " " line "${line}")
    list(APPEND out "${line}")
  endforeach()
  set(${result} "${out}" PARENT_SCOPE)
endfunction()

function(val_only lines result)  # a resumed run's train means cover only its own steps
  string(REGEX REPLACE "train [0-9.]+ " "" lines "${lines}")
  set(${result} "${lines}" PARENT_SCOPE)
endfunction()

function(run ranks extra output)
  execute_process(COMMAND ${MPIEXEC} ${NP_FLAG} ${ranks} ${MPI_FLAGS} ${PROGRAM} ${ARGS} ${extra}
                  RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "${ranks} rank(s), ${extra}: exit status ${status}\n${out}\n${err}")
  endif()
  set(${output} "${out}" PARENT_SCOPE)
endfunction()

run(1 "" whole)
loss_lines("${whole}" expected)
if(expected STREQUAL "" OR NOT expected MATCHES "train")
  message(FATAL_ERROR "no losses in the output of one rank:\n${whole}")
endif()
string(REGEX MATCH "best_val_loss: [^\n]*" best "${whole}")
foreach(ranks 2 3 4)
  run(${ranks} "" out)
  loss_lines("${out}" got)
  if(NOT got STREQUAL expected)
    message(FATAL_ERROR "${ranks} ranks print other losses than one.\n1 rank:  ${expected}\n${ranks} ranks: ${got}")
  endif()
endforeach()

file(REMOVE ${CHECKPOINT})
set(pieces "")
set(resume "")
set(counts 2 4 1 3)
foreach(piece RANGE 0 40)
  math(EXPR at "${piece} % 4")
  list(GET counts ${at} ranks)
  run(${ranks} "--checkpoint;${CHECKPOINT};${resume};--time-limit;1e-9" out)
  string(APPEND pieces "${out}")
  math(EXPR count "${piece} + 1")
  set(resume "--resume;${CHECKPOINT}")
  if(NOT out MATCHES "stopped at step")
    break()
  endif()
endforeach()
loss_lines("${pieces}" got)
val_only("${got}" got)
val_only("${expected}" expected_val)
string(REGEX MATCH "best_val_loss: [^\n]*" best_pieces "${out}")
if(NOT got STREQUAL expected_val OR NOT best_pieces STREQUAL best)
  message(FATAL_ERROR "the run in pieces on 2, 4, 1, 3, ... ranks differs from one rank's.\n"
                      "one rank:  ${expected_val} ${best}\nin pieces: ${got} ${best_pieces}")
endif()
message(STATUS "1, 2, 3, 4 ranks and ${count} pieces on changing rank counts: ${expected}; ${best}")
