#include "supervisor/worker_user.h"

#include <pwd.h>

#include <vector>

namespace shoal {

namespace {

std::optional<WorkerUser> Lookup(const std::string& name) {
  std::vector<char> buf(16384);
  struct passwd pw;
  struct passwd* found = nullptr;
  if (getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) return std::nullopt;
  return WorkerUser{found->pw_uid, found->pw_gid, name};
}

}  // namespace

std::string WorkerUser::Describe() const {
  return name + " (uid " + std::to_string(uid) + ", gid " + std::to_string(gid) + ")";
}

Result<std::optional<WorkerUser>> ChooseWorkerUser(const std::string& setting, uid_t euid) {
  if (setting == "shoald") return std::optional<WorkerUser>();
  if (setting == "auto" || setting.empty()) {
    if (euid != 0) return std::optional<WorkerUser>();  // cannot switch: workers keep our uid
    for (const char* name : {"shoal-worker", "nobody"}) {
      if (auto u = Lookup(name); u && u->uid != 0) return u;
    }
    return Status::BadRequest("worker_user = auto: neither user shoal-worker nor nobody exists; create "
                              "shoal-worker (systemd-sysusers shoal.sysusers) or name a user with worker_user");
  }
  auto u = Lookup(setting);
  if (!u) return Status::BadRequest("worker_user '" + setting + "' does not exist");
  if (u->uid == 0) {
    return Status::BadRequest("worker_user '" + setting + "' is root: model code must not run as root; use "
                              "auto, another user, or shoald");
  }
  if (euid == 0) return std::optional<WorkerUser>(*u);
  if (u->uid == euid) return std::optional<WorkerUser>();
  return Status::BadRequest("worker_user '" + setting + "' needs shoald to run as root (it runs as uid " +
                            std::to_string(euid) + "); use auto or shoald");
}

}  // namespace shoal
