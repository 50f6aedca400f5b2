// libFuzzer target for the archive reader (package_format/archive_reader.h): ReadArchive
// (what tools and Python read) and ParseArchive (what shoald serves).
// Built with -DSHOAL_FUZZ=ON and clang; tests/fuzz/README.md says how to run it. The
// same entry point replays tests/fuzz/corpus under ctest in every build (replay_main.cc).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "package_format/archive_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view file(reinterpret_cast<const char*>(data), size);
  // The device rule reads a TorchScript data.pkl (the worker's, from a client's archive):
  // any bytes, no crash, no sanitizer report.
  (void)shoal::PickleNamesCuda(file);
  // Whatever reads must describe bytes inside the input, servable or not (tools use it).
  auto read = shoal::ReadArchive(file);
  if (read.ok()) {
    for (const auto& r : read->records) {
      if (r.offset > size || r.size > size - r.offset) __builtin_trap();
    }
  }
  // Whatever parses has no problem and only stored, aligned storages.
  auto info = shoal::ParseArchive(file);
  if (info.ok() != (read.ok() && read->problem.empty())) __builtin_trap();
  if (info.ok()) {
    for (const auto& r : info->records) {
      if (r.storage && (r.method != 0 || r.offset % shoal::kStorageAlignment != 0)) __builtin_trap();
    }
  }
  return 0;
}
