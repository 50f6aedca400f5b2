// Reading the model repository's folder (supervisor/model_repository.h) on real files:
// which files are models under which names, which are problems, and which folders and
// archives shoald trusts. Loading and SIGHUP run against a real shoald in
// tests/python/test_repository.py.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>
#include <string>

#include "protocol/model_name.h"
#include "supervisor/model_repository.h"
#include "tests/cpp/catch.h"

using namespace shoal;
namespace fs = std::filesystem;

namespace {

// A fresh folder, removed with its contents.
struct Folder {
  fs::path path;
  Folder() {
    char tmpl[] = "/tmp/shoal-repo-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~Folder() { fs::remove_all(path); }
  void File(const std::string& name) {
    fs::create_directories((path / name).parent_path());
    std::ofstream(path / name) << "x";
  }
};

}  // namespace

TEST_CASE("NAME.pt is model NAME and NAME/VERSION.pt is NAME:VERSION; other files are ignored", "[repository]") {
  Folder f;
  for (const char* name : {"resnet.pt", "bert/1.pt", "bert/2.pt", "README", "notes.txt", ".hidden.pt", "bert/.tmp.pt",
                           "bert/old.pt.bak", "bert/deeper/3.pt", "empty/readme"}) {
    f.File(name);
  }
  auto scan = ScanRepository(f.path.string(), geteuid());
  REQUIRE(scan.ok());
  REQUIRE(scan->problems.empty());
  REQUIRE(scan->archives.size() == 3);
  REQUIRE(scan->archives[0].model == "bert:1");
  REQUIRE(scan->archives[0].path == (f.path / "bert/1.pt").string());
  REQUIRE(scan->archives[1].model == "bert:2");
  REQUIRE(scan->archives[2].model == "resnet");
  REQUIRE(scan->archives[2].path == (f.path / "resnet.pt").string());
  // what a change is measured against: the file's identity, size and modification time
  struct stat st;
  REQUIRE(stat((f.path / "resnet.pt").c_str(), &st) == 0);
  REQUIRE(scan->archives[2].found.st_ino == st.st_ino);
  REQUIRE(scan->archives[2].found.st_size == 1);
}

TEST_CASE("a file that cannot be a model is a problem of its own, and the others are found", "[repository]") {
  Folder f;
  for (const char* name : {"good.pt", "two words.pt", "a:1.pt", "colon:name/1.pt", "m/bad version.pt"}) f.File(name);
  fs::create_symlink(f.path / "nowhere.pt", f.path / "dangling.pt");
  auto scan = ScanRepository(f.path.string(), geteuid());
  REQUIRE(scan.ok());
  REQUIRE(scan->archives.size() == 1);
  REQUIRE(scan->archives[0].model == "good");
  REQUIRE(scan->problems.size() == 5);
  std::map<std::string, std::string> why;
  for (const auto& p : scan->problems) why[fs::path(p.file).lexically_relative(f.path).string()] = p.error;
  REQUIRE(why["a:1.pt"].find("versions are NAME/VERSION.pt") != std::string::npos);
  REQUIRE(why["two words.pt"].find("model name 'two words' is invalid") != std::string::npos);
  REQUIRE(why["colon:name/1.pt"].find("model name 'colon:name:1' is invalid") != std::string::npos);
  REQUIRE(why["m/bad version.pt"].find("is invalid") != std::string::npos);
  REQUIRE(why["dangling.pt"].find("cannot read it: No such file or directory") != std::string::npos);
  for (const auto& [file, error] : why) REQUIRE(error.find("then send shoald SIGHUP") != std::string::npos);
}

TEST_CASE("shoald trusts only what root or its own user owns and no other user may write", "[repository]") {
  struct stat st {};
  st.st_mode = S_IFREG | 0644;
  st.st_uid = 0;
  REQUIRE(TrustedByShoald(st, 999, "the archive").ok());
  st.st_uid = 999;
  REQUIRE(TrustedByShoald(st, 999, "the archive").ok());
  st.st_mode = S_IFREG | 0664;  // the group is the admin's choice
  REQUIRE(TrustedByShoald(st, 999, "the archive").ok());
  st.st_uid = 1234;
  auto foreign = TrustedByShoald(st, 999, "the archive");
  REQUIRE(foreign.message().rfind("the archive belongs to uid 1234: shoald loads", 0) == 0);
  REQUIRE(foreign.message().find("chown it") != std::string::npos);
  st.st_uid = 0;
  st.st_mode = S_IFREG | 0646;
  REQUIRE(TrustedByShoald(st, 999, "the archive").message().find("may be written by every user") != std::string::npos);

  Folder f;
  f.File("m/1.pt");
  f.File("ok.pt");
  chmod((f.path / "m").c_str(), 0777);
  auto scan = ScanRepository(f.path.string(), geteuid());
  REQUIRE(scan.ok());
  REQUIRE(scan->archives.size() == 1);  // ok.pt; m/ is refused as a whole
  REQUIRE(scan->problems.size() == 1);
  REQUIRE(scan->problems[0].file == (f.path / "m").string());
  REQUIRE(scan->problems[0].error.find("the folder may be written by every user") != std::string::npos);
  chmod(f.path.c_str(), 0777);
  auto open = ScanRepository(f.path.string(), geteuid());
  REQUIRE(open.status().message().rfind("model_repository " + f.path.string() + ": the folder may be written", 0) == 0);
  auto absent = ScanRepository((f.path / "absent").string(), geteuid());
  REQUIRE(absent.status().message().find("cannot read the folder") != std::string::npos);
}

TEST_CASE("model names: NAME or NAME:VERSION, 1-128 characters, no spaces or '/'", "[repository]") {
  for (const char* ok : {"m", "m:1", "resnet-50_v2:2024.1"}) REQUIRE(CheckModelName(ok).ok());
  for (const std::string& bad : std::vector<std::string>{"", "a b", "a/b", ":1", "m:", "m:1:2", std::string(129, 'x')}) {
    CAPTURE(bad);
    REQUIRE(CheckModelName(bad).message().find("is invalid: use NAME or NAME:VERSION") != std::string::npos);
  }
}
