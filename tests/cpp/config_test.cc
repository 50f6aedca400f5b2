#include "supervisor/config.h"
#include "tests/cpp/catch.h"

using namespace shoal;

TEST_CASE("config file sets every key and keeps defaults otherwise", "[config]") {
  SupervisorConfig cfg;
  auto st = ParseConfig(
      "# comment\n"
      "workers = 4   # trailing comment\n"
      "timeout_ms=500\n"
      "admin_group = ops\n"
      "model = a = /m/a.pt\n"
      "model = b=/m/b.pt\n"
      "\n"
      "log_level = warn\n",
      "test.conf", &cfg);
  REQUIRE(st.ok());
  REQUIRE(cfg.workers == 4);
  REQUIRE(cfg.default_timeout_ms == 500);
  REQUIRE(cfg.kill_grace_ms == 2000);  // default kept
  REQUIRE(cfg.admin_group == "ops");
  REQUIRE(cfg.models.size() == 2);
  REQUIRE(cfg.models[0] == std::make_pair(std::string("a"), std::string("/m/a.pt")));
  REQUIRE(cfg.log_level == "warn");
}

TEST_CASE("config errors name the file, the line and the key", "[config]") {
  SupervisorConfig cfg;
  auto st = ParseConfig("workers = 2\nworkers = many\n", "/etc/shoal/shoald.conf", &cfg);
  REQUIRE(st.code() == Code::kBadRequest);
  REQUIRE(st.message() == "/etc/shoal/shoald.conf:2: workers takes an integer in [0, 1024], not 'many'");
  REQUIRE(ParseConfig("wrokers = 2\n", "f", &cfg).message().find("unknown key 'wrokers'") != std::string::npos);
  REQUIRE(ParseConfig("just words\n", "f", &cfg).message().find("expected 'key = value'") != std::string::npos);
  REQUIRE(ParseConfig("model = nopath\n", "f", &cfg).message().find("NAME=ARCHIVE") != std::string::npos);
  REQUIRE(ParseConfig("workers = 0\n", "f", &cfg).message().find("at least 1") != std::string::npos);
  REQUIRE_FALSE(ParseConfig("log_level = loud\n", "f", &cfg).ok());
}

TEST_CASE("the shipped shoald.conf parses", "[config]") {
  SupervisorConfig cfg;
  auto st = LoadConfigFile(SHOAL_SOURCE_DIR "/systemd/shoald.conf", &cfg);
  REQUIRE(st.ok());
  REQUIRE(cfg.admin_group == "shoal-admin");
  REQUIRE(cfg.models.empty());
}
