# Run corr_engine_bench --all briefly and check that it printed a result line with validated=1
# for every scenario x implementation x thread count. Timings are not checked.
#
#   cmake -DBENCH=/path/to/corr_engine_bench -P check_engine_bench.cmake
if(NOT BENCH)
    message(FATAL_ERROR "BENCH is not set: pass -DBENCH=/path/to/corr_engine_bench")
endif()

execute_process(COMMAND ${BENCH} --all --seconds 0.2 --warmup 0 --rounds 1
    OUTPUT_VARIABLE output ERROR_VARIABLE errors RESULT_VARIABLE status)
if(NOT status EQUAL 0)
    message(FATAL_ERROR "corr_engine_bench exited with status ${status}\nstdout:\n${output}\n"
        "stderr:\n${errors}")
endif()

set(missing "")
foreach(scenario deliver cycle miss)
    foreach(impl corr mutex lfht)
        foreach(threads 1 2)
            set(pattern
                "result scenario=${scenario} impl=${impl} threads=${threads} [^\n]*validated=1\n")
            if(NOT output MATCHES "${pattern}")
                string(APPEND missing " scenario=${scenario}/impl=${impl}/threads=${threads}")
            endif()
        endforeach()
    endforeach()
endforeach()
if(missing)
    message(FATAL_ERROR "no validated result line for:${missing}\nstdout:\n${output}")
endif()
if(output MATCHES "validated=0")
    message(FATAL_ERROR "a result line has validated=0:\n${output}")
endif()
string(REGEX MATCHALL "(^|\n)result " result_lines "${output}")
list(LENGTH result_lines result_count)
if(NOT result_count EQUAL 18)
    message(FATAL_ERROR "expected 18 result lines (3 scenarios x 3 implementations x 2 thread "
        "counts), found ${result_count}:\n${output}")
endif()
message(STATUS "corr_engine_bench: 18 validated results")
