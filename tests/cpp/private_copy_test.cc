#include "worker/private_copy.h"

#include <dlfcn.h>

#include <algorithm>
#include <filesystem>

#include "base/subprocess.h"
#include "tests/cpp/catch.h"

using namespace shoal;
namespace fs = std::filesystem;

namespace {
fs::path TempDir() {
  char tmpl[] = "/tmp/shoal-copy-test-XXXXXX";
  return fs::path(mkdtemp(tmpl));
}
}  // namespace

TEST_CASE("a private copy has its own soname, no GNU_UNIQUE symbols, and its own statics", "[copies]") {
  if (!FindPatchelf().ok()) {
    WARN("patchelf is not installed: skipped");
    return;
  }
  const std::string src = SHOAL_UNIQUE_FIXTURE;
  auto unique = CountUniqueSymbols(src);
  REQUIRE(unique.ok());
  REQUIRE(*unique > 0);  // the fixture really has some, or the test proves nothing

  auto dir = TempDir();
  std::string dst = (dir / "copy.so").string();
  CopyEdits edits;
  edits.soname = "libshoal-test-copy.so";
  REQUIRE(MakePrivateCopy(src, dst, edits).ok());
  REQUIRE(*CountUniqueSymbols(dst) == 0);
  REQUIRE(*CountUniqueSymbols(src) == *unique);  // the source is untouched
  REQUIRE(*Soname(dst) == "libshoal-test-copy.so");

  // Loaded side by side, RTLD_LOCAL: the copy's inline static is its own. (With the
  // GNU_UNIQUE binding glibc would merge both into one counter.)
  void* a = dlopen(src.c_str(), RTLD_NOW | RTLD_LOCAL);
  void* b = dlopen(dst.c_str(), RTLD_NOW | RTLD_LOCAL);
  REQUIRE(a != nullptr);
  REQUIRE(b != nullptr);
  auto bump_a = reinterpret_cast<int (*)()>(dlsym(a, "unique_statics_bump"));
  auto bump_b = reinterpret_cast<int (*)()>(dlsym(b, "unique_statics_bump"));
  REQUIRE(bump_a() == 1);
  REQUIRE(bump_a() == 2);
  REQUIRE(bump_b() == 1);
  fs::remove_all(dir);
}

TEST_CASE("an existing copy is reused; edits add and re-point dependencies", "[copies]") {
  if (!FindPatchelf().ok()) {
    WARN("patchelf is not installed: skipped");
    return;
  }
  auto dir = TempDir();
  std::string first = (dir / "first.so").string();
  CopyEdits add;
  add.add_needed.push_back("libshoal-test-a.so");
  REQUIRE(MakePrivateCopy(SHOAL_UNIQUE_FIXTURE, first, add).ok());
  auto needed = *NeededLibraries(first);
  REQUIRE(std::find(needed.begin(), needed.end(), "libshoal-test-a.so") != needed.end());

  std::string second = (dir / "second.so").string();
  CopyEdits repoint;
  repoint.replace_needed.push_back({"libshoal-test-a.so", "/opt/elsewhere/libshoal-test-b.so"});
  REQUIRE(MakePrivateCopy(first, second, repoint).ok());
  needed = *NeededLibraries(second);
  REQUIRE(std::find(needed.begin(), needed.end(), "/opt/elsewhere/libshoal-test-b.so") != needed.end());
  REQUIRE(std::find(needed.begin(), needed.end(), "libshoal-test-a.so") == needed.end());

  auto mtime = fs::last_write_time(second);
  REQUIRE(MakePrivateCopy(first, second, CopyEdits{}).ok());  // exists: reused as it is
  REQUIRE(fs::last_write_time(second) == mtime);
  int files = 0;
  for (auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  REQUIRE(files == 2);  // no temporary left behind
  fs::remove_all(dir);
}

TEST_CASE("a failing patchelf leaves no copy and says which file", "[copies]") {
  auto dir = TempDir();
  std::string dst = (dir / "copy.so").string();
  setenv("SHOAL_PATCHELF", "/bin/false", 1);
  CopyEdits edits;
  edits.soname = "x.so";
  auto st = MakePrivateCopy(SHOAL_UNIQUE_FIXTURE, dst, edits);
  unsetenv("SHOAL_PATCHELF");
  REQUIRE(!st.ok());
  REQUIRE(st.message().find(dst) != std::string::npos);
  REQUIRE(st.message().find("/bin/false") != std::string::npos);
  REQUIRE(fs::is_empty(dir));
  fs::remove_all(dir);
}

TEST_CASE("not an ELF file is an error, not a corruption", "[copies]") {
  auto dir = TempDir();
  auto f = dir / "text.so";
  FILE* out = fopen(f.c_str(), "w");
  fputs("definitely not ELF", out);
  fclose(out);
  REQUIRE(!RemoveUniqueSymbols(f.string()).ok());
  fs::remove_all(dir);
}

TEST_CASE("RunProcess reports exit codes, signals, output and time-outs", "[subprocess]") {
  auto ok = RunProcess({"/bin/sh", "-c", "echo out; echo err >&2"});
  REQUIRE(ok.ok());
  REQUIRE(ok->succeeded());
  REQUIRE(ok->out == "out\n");
  REQUIRE(ok->err == "err\n");
  auto bad = RunProcess({"/bin/sh", "-c", "exit 3"});
  REQUIRE(!bad->succeeded());
  REQUIRE(bad->Describe() == "exit code 3");
  auto killed = RunProcess({"/bin/sh", "-c", "kill -SEGV $$"});
  REQUIRE(killed->Describe().find("SIGSEGV") != std::string::npos);
  auto slow = RunProcess({"/bin/sleep", "10"}, 1);
  REQUIRE(slow->timed_out);
  REQUIRE(!slow->succeeded());
  REQUIRE(!RunTool({"/bin/sh", "-c", "echo why >&2; exit 1"}).ok());
}
