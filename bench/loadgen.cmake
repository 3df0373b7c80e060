# corr_loadgen: the HTTP load generator for corrd and its peers (bench/loadgen.c).
# Included from bench/CMakeLists.txt; needs libnghttp2 (Debian: libnghttp2-dev).
pkg_check_modules(NGHTTP2 REQUIRED IMPORTED_TARGET libnghttp2)
find_package(Threads REQUIRED)

add_executable(corr_loadgen ${CMAKE_CURRENT_LIST_DIR}/loadgen.c)
target_link_libraries(corr_loadgen PRIVATE PkgConfig::NGHTTP2 Threads::Threads)
if(TARGET corr_build_flags)
    target_link_libraries(corr_loadgen PRIVATE corr_build_flags)
endif()
