// Catch2 v2's main; with v3, Catch2::Catch2WithMain provides it and this file is empty.
#if !__has_include(<catch2/catch_test_macros.hpp>)
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#endif
