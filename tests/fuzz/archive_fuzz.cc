// libFuzzer target for the archive reader (package_format/archive_reader.h).
// Built with -DSHOAL_FUZZ=ON and clang; tests/fuzz/README.md says how to run it. The
// same entry point replays tests/fuzz/corpus under ctest in every build (replay_main.cc).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "package_format/archive_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto info = shoal::ParseArchive(std::string_view(reinterpret_cast<const char*>(data), size));
  if (info.ok()) {
    // Whatever parses must describe bytes inside the input.
    for (const auto& r : info->records) {
      if (r.offset > size || r.size > size - r.offset) __builtin_trap();
      if (r.storage && (r.method != 0 || r.offset % shoal::kStorageAlignment != 0)) __builtin_trap();
    }
  }
  return 0;
}
