# One CTest entry per GoogleTest suite of the GPU test binary, each its own process, so that a
# CUDA error (sticky for the process: every later CUDA call fails) or a crash in one suite cannot
# hide the results of the others.
#
# Suites are read off the sources (TEST / TEST_F / TEST_P lines); editing a GPU test source
# re-runs the configure step, so a new suite gets its entry. A last entry, gpu.others, runs every
# test no listed suite matched (a TEST written some other way), so nothing is silently dropped.
#
# Skipped, never passed: gpu_test_main.cc prints "moe_gpu_tests: SKIPPED: ..." when no test
# failed but some were skipped (no usable GPU) or none matched; that line, never printed next to a
# failure, is the entry's SKIP_REGULAR_EXPRESSION.
function(moe_gpu_test_chunks target)
  set(filters "")
  set(names "")
  foreach(src ${ARGN})
    file(STRINGS ${src} lines REGEX "^TEST(_F|_P)?\\([A-Za-z0-9_]+,")
    foreach(line ${lines})
      string(REGEX REPLACE "^(TEST|TEST_F|TEST_P)\\(([A-Za-z0-9_]+),.*" "\\1;\\2" m "${line}")
      list(GET m 0 kind)
      list(GET m 1 suite)
      if(kind STREQUAL "TEST_P")
        set(filter "*/${suite}.*")   # instantiated as Prefix/Suite.Name/Param
      else()
        set(filter "${suite}.*")
      endif()
      if(NOT suite IN_LIST names)
        list(APPEND names ${suite})
        list(APPEND filters ${filter})
      endif()
    endforeach()
  endforeach()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${ARGN})
  set(skip_re "moe_gpu_tests: SKIPPED:")
  set(all "")
  foreach(suite filter IN ZIP_LISTS names filters)
    add_test(NAME gpu.${suite} COMMAND ${target} --gtest_filter=${filter} --gtest_brief=1)
    set_tests_properties(gpu.${suite} PROPERTIES SKIP_REGULAR_EXPRESSION "${skip_re}"
                                                 TIMEOUT 900)
    string(APPEND all "${filter}:")
  endforeach()
  add_test(NAME gpu.others COMMAND ${target} --gtest_filter=-${all} --gtest_brief=1)
  set_tests_properties(gpu.others PROPERTIES SKIP_REGULAR_EXPRESSION "${skip_re}" TIMEOUT 900)
endfunction()
