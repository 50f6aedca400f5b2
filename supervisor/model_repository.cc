// Reading the model repository and keeping the registry in line with it
// (supervisor/model_repository.h). Loop thread only.
#include "supervisor/model_repository.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "protocol/model_name.h"
#include "protocol/utf8.h"

namespace shoal {

namespace {

constexpr const char* kWhatToDo = " (fix or remove it, then send shoald SIGHUP: systemctl reload shoal)";

bool EndsWithPt(const std::string& name) { return name.size() > 3 && name.compare(name.size() - 3, 3, ".pt") == 0; }

// An open folder: its entries, and files found relative to it.
class Folder {
 public:
  // Opens `path` (relative to folder `at`); its stat in *st.
  static Result<std::unique_ptr<Folder>> Open(int at, const std::string& path, struct stat* st) {
    int fd = openat(at, path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR* dir = fd < 0 ? nullptr : fdopendir(fd);
    if (dir == nullptr || fstat(fd, st) != 0) {
      int err = errno;
      if (dir != nullptr) closedir(dir);
      else if (fd >= 0) close(fd);
      return Status::FromErrno("cannot read the folder " + path, err);
    }
    return std::unique_ptr<Folder>(new Folder(dir));
  }
  ~Folder() { closedir(dir_); }
  Folder(const Folder&) = delete;
  Folder& operator=(const Folder&) = delete;

  int fd() const { return dirfd(dir_); }
  // Its entries but dot files, sorted.
  std::vector<std::string> Entries() {
    std::vector<std::string> out;
    while (dirent* e = readdir(dir_)) {
      if (e->d_name[0] != '.') out.emplace_back(e->d_name);
    }
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  explicit Folder(DIR* dir) : dir_(dir) {}
  DIR* dir_;
};

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec;
}

}  // namespace

Status TrustedByShoald(const struct stat& st, uid_t shoald_uid, const std::string& what) {
  if (st.st_uid != 0 && st.st_uid != shoald_uid) {
    return Status::BadRequest(what + " belongs to uid " + std::to_string(st.st_uid) +
                              ": shoald loads from the model repository only what root or its own user (uid " +
                              std::to_string(shoald_uid) +
                              ") owns, since whoever may change it chooses the code workers run; chown it");
  }
  if ((st.st_mode & S_IWOTH) != 0) {
    return Status::BadRequest(what + " may be written by every user, who could choose the code workers run; "
                              "chmod o-w it");
  }
  return Status::Ok();
}

Result<RepositoryScan> ScanRepository(const std::string& folder, uid_t shoald_uid) {
  const std::string where = "model_repository " + folder + ": ";
  struct stat top_st;
  auto top = Folder::Open(AT_FDCWD, folder, &top_st);
  if (!top.ok()) return Status(top.status().code(), where + top.status().message());
  if (auto st = TrustedByShoald(top_st, shoald_uid, "the folder"); !st.ok()) return Status(st.code(), where + st.message());
  RepositoryScan scan;
  auto problem = [&](const std::string& path, const std::string& model, const std::string& error) {
    scan.problems.push_back({ShowNonUtf8(path), model, error + kWhatToDo});  // a reply's str is read as UTF-8
  };
  auto archive = [&](const std::string& path, const std::string& model, const struct stat& st) {
    if (auto ok = CheckModelName(model); !ok.ok()) return problem(path, "", ok.message());
    scan.archives.push_back({model, path, st});
  };
  for (const std::string& name : (*top)->Entries()) {
    const std::string path = folder + "/" + name;
    struct stat st;
    if (fstatat((*top)->fd(), name.c_str(), &st, 0) != 0) {  // a dangling link, for one
      if (EndsWithPt(name)) problem(path, "", Status::FromErrno("cannot read it", errno).message());
      continue;
    }
    if (!S_ISDIR(st.st_mode)) {
      if (!EndsWithPt(name)) continue;
      std::string model = name.substr(0, name.size() - 3);
      if (model.find(':') != std::string::npos) {
        problem(path, "", "'" + name + "' is not a model's file name: versions are NAME/VERSION.pt");
      } else {
        archive(path, model, st);
      }
      continue;
    }
    // NAME/VERSION.pt
    struct stat sub_st;
    auto sub = Folder::Open((*top)->fd(), name, &sub_st);
    if (!sub.ok()) {
      problem(path, "", sub.status().message());
      continue;
    }
    if (auto ok = TrustedByShoald(sub_st, shoald_uid, "the folder"); !ok.ok()) {
      problem(path, "", ok.message());
      continue;
    }
    for (const std::string& file : (*sub)->Entries()) {
      if (!EndsWithPt(file)) continue;
      const std::string version_path = path + "/" + file;
      struct stat vst;
      if (fstatat((*sub)->fd(), file.c_str(), &vst, 0) != 0) {
        problem(version_path, "", Status::FromErrno("cannot read it", errno).message());
        continue;
      }
      if (!S_ISDIR(vst.st_mode)) archive(version_path, name + ":" + file.substr(0, file.size() - 3), vst);
    }
  }
  return scan;
}

ModelRepository::ModelRepository(boost::asio::io_context& io, const SupervisorConfig& config, ModelRegistry* registry)
    : io_(io), config_(config), registry_(registry) {}

Result<RepositoryScan> ModelRepository::Scan() { return ScanRepository(folder_, geteuid()); }

bool ModelRepository::Configured(const struct stat& st) const {
  return std::find(configured_.begin(), configured_.end(), std::make_pair(st.st_dev, st.st_ino)) != configured_.end();
}

Status ModelRepository::Start(const std::vector<ArchiveRef>& configured) {
  for (const auto& a : configured) configured_.emplace_back(a->checked().st_dev, a->checked().st_ino);
  folder_ = config_.model_repository;
  if (folder_.empty()) return Status::Ok();
  auto scan = Scan();
  if (!scan.ok()) {
    return Status(scan.status().code(), scan.status().message() +
                                            " (create it, make it root's or shoald's, or unset model_repository)");
  }
  starting_ = true;
  Apply(*scan);
  starting_ = false;
  return Status::Ok();
}

void ModelRepository::Reconcile() {
  if (config_.model_repository != folder_) {
    spdlog::info("model_repository is now '{}' (was '{}')", config_.model_repository, folder_);
  }
  folder_ = config_.model_repository;
  problems_.clear();
  failed_.clear();
  folder_problem_.clear();
  if (folder_.empty()) {
    std::vector<std::string> all;
    for (const auto& [model, r] : records_) all.push_back(model);
    for (const auto& model : all) Remove(model, "is no longer served (model_repository is unset)", std::nullopt);
    return;
  }
  auto scan = Scan();
  if (!scan.ok()) {
    folder_problem_ = scan.status().message();
    spdlog::error("SIGHUP: {}; the models loaded from it keep serving", folder_problem_);
    return;
  }
  Apply(*scan);
}

void ModelRepository::Apply(const RepositoryScan& scan) {
  for (const auto& p : scan.problems) Report(p.file, p.model, p.error);
  std::map<std::string, const RepositoryArchive*> wanted;
  for (const auto& a : scan.archives) {
    if (Configured(a.found)) continue;  // a model line serves it
    wanted[a.model] = &a;
  }
  std::vector<std::string> gone;
  for (const auto& [model, r] : records_) {
    if (wanted.count(model) == 0) gone.push_back(model);
  }
  for (const auto& model : gone) Remove(model, "is gone", std::nullopt);
  for (const auto& [model, a] : wanted) {
    auto it = records_.find(model);
    if (it == records_.end()) {
      Add(model, a->path);
      continue;
    }
    Record& r = it->second;
    if (r.state == Record::State::kUnloading) {
      r.then_load = a->path;  // loaded as it is then
    } else if (!registry_->Holds(model, r.archive)) {
      records_.erase(it);  // an admin unloaded it: the folder says it serves
      Add(model, a->path);
    } else if (r.path != a->path || !SameFile(r.archive->checked(), a->found)) {
      Remove(model, "changed", a->path);
    }
  }
  size_t loading = 0, unloading = 0;
  for (const auto& [model, r] : records_) {
    loading += r.state == Record::State::kLoading;
    unloading += r.state == Record::State::kUnloading;
  }
  spdlog::info("model repository {}: {} models ({} loading, {} being unloaded), {} problems", folder_,
               records_.size(), loading, unloading, problems_.size());
}

void ModelRepository::Add(const std::string& model, const std::string& path) {
  auto archive = ArchiveFile::Open(path);
  if (!archive.ok()) return Report(path, model, archive.status().message() + kWhatToDo);
  // Checked on the file opened, not on the path: a link may lead elsewhere.
  if (auto st = TrustedByShoald((*archive)->checked(), geteuid(), "the archive"); !st.ok()) {
    return Report(path, model, st.message() + kWhatToDo);
  }
  if (registry_->Has(model)) {
    return Report(path, model,
                  "model '" + model + "' is already loaded from another file (a model line of the configuration, or "
                  "`shoal load`); rename this file, or unload that model, then send shoald SIGHUP");
  }
  records_[model] = Record{path, *archive, Record::State::kLoading, std::nullopt};
  if (starting_) {
    registry_->AddConfigured(model, *archive);
    records_[model].state = Record::State::kServing;
    spdlog::info("model repository: model '{}' from {}", model, path);
    return;
  }
  ArchiveRef held = *archive;
  auto st = registry_->Load(model, held, [this, model, held](const Status& st, const std::string& tb) {
    Loaded(model, held, st, tb);
  });
  if (!st.ok()) {
    records_.erase(model);
    Report(path, model, st.message());
  }
}

void ModelRepository::Loaded(const std::string& model, const ArchiveRef& archive, const Status& st,
                             const std::string& traceback) {
  auto it = records_.find(model);
  if (it == records_.end() || it->second.archive != archive || it->second.state != Record::State::kLoading) return;
  if (st.ok()) {
    it->second.state = Record::State::kServing;
    spdlog::info("model repository: model '{}' loaded from {}", model, it->second.path);
  } else {
    std::string path = it->second.path;
    records_.erase(it);
    failed_.insert(model);
    Report(path, model, "loading it failed: " + st.ToString() + kWhatToDo, traceback);
  }
  on_changed_();
}

void ModelRepository::Remove(const std::string& model, const std::string& why, std::optional<std::string> then_load) {
  auto it = records_.find(model);
  if (it == records_.end()) return;
  Record& r = it->second;
  if (r.state == Record::State::kUnloading) {
    r.then_load = std::move(then_load);
    return;
  }
  if (!registry_->Holds(model, r.archive)) {  // already unloaded (by an admin)
    records_.erase(it);
    if (then_load) Add(model, *then_load);
    return;
  }
  spdlog::info("model repository: {} {}; model '{}' is unloaded once its jobs are done{}", r.path, why, model,
               then_load ? " and loaded again" : "");
  r.state = Record::State::kUnloading;
  r.then_load = std::move(then_load);
  ArchiveRef archive = r.archive;
  // The registry may finish at once (no jobs) and call Unloaded before it returns.
  auto st = registry_->Unload(model, [this, model, archive] { Unloaded(model, archive); });
  if (!st.ok()) {
    spdlog::error("model repository: cannot unload model '{}': {}", model, st.ToString());
    records_.erase(model);
  }
}

void ModelRepository::Unloaded(const std::string& model, const ArchiveRef& archive) {
  auto it = records_.find(model);
  if (it == records_.end() || it->second.archive != archive) return;
  std::optional<std::string> then_load = it->second.then_load;
  records_.erase(it);
  if (then_load) {
    struct stat st;
    if (stat(then_load->c_str(), &st) == 0) Add(model, *then_load);  // as it is now
  }
  on_changed_();
}

bool ModelRepository::LoadFailed(const std::string& model, const Status& why) {
  if (failed_.count(model) != 0) return true;  // reported by another worker already
  auto it = records_.find(model);
  if (it == records_.end()) return false;
  failed_.insert(model);
  Report(it->second.path, model, "loading it failed: " + why.ToString() + kWhatToDo);
  // Not from inside the registry's callback that brought the news.
  ArchiveRef archive = it->second.archive;
  boost::asio::post(io_, [this, model, archive] {
    auto r = records_.find(model);
    if (r != records_.end() && r->second.archive == archive) Remove(model, "could not be loaded", std::nullopt);
  });
  return true;
}

void ModelRepository::Failed(const std::string& model, const std::string& why) {
  auto it = records_.find(model);
  if (it == records_.end() || it->second.state == Record::State::kUnloading) return;
  failed_.insert(model);
  Report(it->second.path, model,
         "marked failed: " + why + "; it is loaded again at the next SIGHUP (systemctl reload shoal)");
  ArchiveRef archive = it->second.archive;
  boost::asio::post(io_, [this, model, archive] {
    auto r = records_.find(model);
    if (r != records_.end() && r->second.archive == archive) Remove(model, "was marked failed", std::nullopt);
  });
}

void ModelRepository::Report(const std::string& file, const std::string& model, const std::string& error,
                             const std::string& traceback) {
  problems_[file] = RepositoryProblem{file, model, error};
  spdlog::error("model repository: {}{}: {}{}", file, model.empty() ? "" : " (model '" + model + "')", error,
                traceback.empty() ? "" : "\n" + traceback);
}

std::vector<RepositoryProblem> ModelRepository::Problems() const {
  std::vector<RepositoryProblem> out;
  if (!folder_problem_.empty()) out.push_back({folder_, "", folder_problem_});
  for (const auto& [file, p] : problems_) out.push_back(p);
  return out;
}

}  // namespace shoal
