// Replays every file of the given folders through the fuzz target (a regression corpus:
// inputs that crashed it once, and inputs that reached new code). Exit 0 = all survived.
// With --verdicts first, also prints "FILE<TAB>ok" or "FILE<TAB>why ParseArchive refuses it"
// per file (bytes outside printable ASCII in the reason shown as '?'):
// tests/python/test_shared_defs.py checks that `shoal inspect` agrees.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "package_format/archive_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {
std::string Printable(std::string s) {
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  return s;
}
}  // namespace

int main(int argc, char** argv) {
  size_t n = 0;
  bool verdicts = argc > 1 && std::strcmp(argv[1], "--verdicts") == 0;
  for (int i = verdicts ? 2 : 1; i < argc; ++i) {
    for (const auto& entry : std::filesystem::directory_iterator(argv[i])) {
      if (!entry.is_regular_file()) continue;
      std::ifstream f(entry.path(), std::ios::binary);
      std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      if (verdicts) {
        auto info = shoal::ParseArchive(std::string_view(bytes.data(), bytes.size()));
        std::printf("%s\t%s\n", entry.path().filename().c_str(), info.ok() ? "ok" : Printable(info.status().message()).c_str());
      }
      ++n;
    }
  }
  std::fprintf(verdicts ? stderr : stdout, "replayed %zu inputs\n", n);
  return n > 0 ? 0 : 1;
}
