// Who workers run as: a root shoald picks a user of their own, a shoald that is not root
// keeps its uid, and nothing names root.
#include <pwd.h>
#include <unistd.h>

#include "supervisor/worker_user.h"
#include "tests/cpp/catch.h"

using namespace shoal;

TEST_CASE("a root shoald's workers get shoal-worker, else nobody", "[worker_user]") {
  auto auto_user = ChooseWorkerUser("auto", 0);
  REQUIRE(auto_user.ok());
  REQUIRE(auto_user->has_value());
  const struct passwd* own = getpwnam("shoal-worker");
  if (own == nullptr) own = getpwnam("nobody");
  REQUIRE(own != nullptr);
  CHECK((*auto_user)->uid == own->pw_uid);
  CHECK((*auto_user)->uid != 0);
  CHECK((*auto_user)->gid == own->pw_gid);
  auto named = ChooseWorkerUser("nobody", 0);
  REQUIRE(named.ok());
  CHECK((*named)->name == "nobody");
  auto kept = ChooseWorkerUser("shoald", 0);
  REQUIRE(kept.ok());
  CHECK_FALSE(kept->has_value());
}

TEST_CASE("a shoald that is not root keeps its uid for workers and says why it cannot switch", "[worker_user]") {
  auto auto_user = ChooseWorkerUser("auto", 4321);
  REQUIRE(auto_user.ok());
  CHECK_FALSE(auto_user->has_value());
  auto other = ChooseWorkerUser("nobody", 4321);
  REQUIRE_FALSE(other.ok());
  CHECK(other.status().message().find("needs shoald to run as root (it runs as uid 4321)") != std::string::npos);
}

TEST_CASE("worker_user refuses root and users that do not exist", "[worker_user]") {
  auto root = ChooseWorkerUser("root", 0);
  REQUIRE_FALSE(root.ok());
  CHECK(root.status().message().find("is root: model code must not run as root") != std::string::npos);
  auto missing = ChooseWorkerUser("no-such-user-xyz", 0);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message() == "worker_user 'no-such-user-xyz' does not exist");
}
