// The manual pages against the one table of shoald's options (supervisor/options.h), so
// that they cannot drift apart: every option, and nothing else, is described in
// shoald.conf(5) with its value, its default and whether SIGHUP applies it, and listed in
// shoald(8) as a flag with its value. Reads the pages' sources, docs/man/*.md.
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "supervisor/options.h"
#include "tests/cpp/catch.h"

using namespace shoal;

namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Entry {
  std::string arg;   // as the term writes it: "N", "yes|no"
  std::string text;  // the definition, its whitespace collapsed to single spaces
};

// The definition-list entries of a page whose term line matches `term` (group 1: the
// key or flag, group 2: its value's name): "**workers** = *N*" then ":   text...".
std::map<std::string, Entry> Entries(const std::string& page, const std::regex& term) {
  std::map<std::string, Entry> out;
  std::istringstream in(page);
  std::string line;
  Entry* current = nullptr;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, term)) {
      REQUIRE(out.count(m[1]) == 0);  // described once
      current = &out[m[1]];
      current->arg = m[2];
      continue;
    }
    bool inside = line.rfind(":   ", 0) == 0 || line.rfind("    ", 0) == 0;
    if (current == nullptr || !(inside || line.empty())) {
      current = nullptr;
      continue;
    }
    std::istringstream words(inside ? line.substr(4) : line);
    for (std::string w; words >> w;) current->text += (current->text.empty() ? "" : " ") + w;
  }
  return out;
}

}  // namespace

TEST_CASE("shoald.conf(5) describes every option with its value, its default and whether SIGHUP applies it",
          "[man]") {
  auto page = Entries(Read(SHOAL_SOURCE_DIR "/docs/man/shoald.conf.5.md"),
                      std::regex(R"(\*\*([a-z_]+)\*\* = \*(.+)\*)"));
  std::set<std::string> keys;
  const SupervisorConfig defaults;
  for (const Option& o : Options()) {
    CAPTURE(o.key);
    keys.insert(o.key);
    REQUIRE(page.count(o.key) == 1);
    const Entry& e = page.at(o.key);
    REQUIRE(e.arg == o.arg);
    std::string value = o.default_text != nullptr ? o.default_text : o.get(defaults);
    std::string said = value.empty() ? "Default: none." : "Default: `" + value + "`.";
    CAPTURE(e.text);
    REQUIRE(e.text.find(said) != std::string::npos);
    REQUIRE(e.text.find(o.reloadable ? "SIGHUP applies it." : "Needs a restart.") != std::string::npos);
    REQUIRE(e.text.find(o.reloadable ? "Needs a restart." : "SIGHUP applies it.") == std::string::npos);
  }
  for (const auto& [key, e] : page) {
    CAPTURE(key);
    REQUIRE(keys.count(key) == 1);  // no option the code does not have
  }
}

TEST_CASE("shoald(8) lists every option as a flag with its value, and no other", "[man]") {
  auto page = Entries(Read(SHOAL_SOURCE_DIR "/docs/man/shoald.8.md"), std::regex(R"(\*\*(--[a-z-]+)\*\* \*(.+)\*)"));
  std::set<std::string> flags = {"--config"};
  REQUIRE(page.at("--config").arg == "FILE");
  for (const Option& o : Options()) {
    CAPTURE(o.key);
    flags.insert(o.Flag());
    REQUIRE(page.count(o.Flag()) == 1);
    REQUIRE(page.at(o.Flag()).arg == o.arg);
    REQUIRE(!page.at(o.Flag()).text.empty());
  }
  for (const auto& [flag, e] : page) {
    CAPTURE(flag);
    REQUIRE(flags.count(flag) == 1);
  }
}
