// ModelRepository: the folder named by model_repository, served as it stands (as Triton
// serves a model repository). NAME.pt there is model NAME; NAME/VERSION.pt is model
// NAME:VERSION (docs/protocol.md, "Model names": a plain NAME runs the newest version).
// At start-up every archive of the folder joins the configuration's models (workers load
// it as they start); on SIGHUP, Reconcile reads the folder again: new archives are loaded,
// removed ones unloaded once the jobs they accepted are done, changed ones (another file,
// or a new size or modification time) unloaded and loaded again, and those that failed
// before are tried again.
//
// These loads are shoald's own act, like the configuration's: it opens each archive by
// path with its own rights (ArchiveFile::Open; docs/security.md), and only where the
// folder, the NAME/ folder and the archive belong to root or to shoald's user and no
// other user may write them (whoever may write there chooses the code workers run). An
// archive that cannot be served (an invalid name, unreadable, not an archive, untrusted,
// a name another model has, a load that fails in the workers, a crash loop) is a problem
// of that file alone: it is logged, listed by Problems() (admins see the list in `models`
// and `status`) and tried again at the next SIGHUP; the other archives serve. An archive
// that a `model` line names is left to that line (its name and device).
//
// Owns its records of what it loaded; the models themselves are the registry's (it loads
// and unloads them only through ModelRegistry, and unloads only what it loaded itself).
// Thread-safety: loop thread only; callbacks run on the loop thread.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <boost/asio.hpp>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "shoal/status.h"
#include "supervisor/archive_file.h"
#include "supervisor/config.h"
#include "supervisor/model_registry.h"

namespace shoal {

// One archive of the folder, as found (nothing opened yet).
struct RepositoryArchive {
  std::string model;  // "NAME" or "NAME:VERSION"
  std::string path;   // FOLDER/NAME.pt or FOLDER/NAME/VERSION.pt
  struct stat found {};  // stat() of the path (links followed): identity, size, mtime
};

// A file of the folder that does not serve, and why (the message says what to do).
struct RepositoryProblem {
  std::string file;
  std::string model;  // the model it would have been; empty when its name says none
  std::string error;
};

struct RepositoryScan {
  std::vector<RepositoryArchive> archives;  // in the order of their paths
  std::vector<RepositoryProblem> problems;
};

// Reads `folder`: NAME.pt files and NAME/VERSION.pt files in NAME folders (dot files,
// other files and deeper folders are ignored). Opens no archive. An error means the folder
// itself cannot be used: it cannot be read, or it is not trusted (TrustedByShoald).
Result<RepositoryScan> ScanRepository(const std::string& folder, uid_t shoald_uid);

// OK when a folder or archive `what` (as stat() describes it) belongs to root or to
// `shoald_uid` and no other user may write it; else why, and what to do.
Status TrustedByShoald(const struct stat& st, uid_t shoald_uid, const std::string& what);

class ModelRepository {
 public:
  // `config` and `registry` must outlive the repository.
  ModelRepository(boost::asio::io_context& io, const SupervisorConfig& config, ModelRegistry* registry);
  ModelRepository(const ModelRepository&) = delete;
  ModelRepository& operator=(const ModelRepository&) = delete;

  // Runs after each load or unload the repository finished (readiness may have changed,
  // queued jobs may run).
  void set_on_changed(std::function<void()> fn) { on_changed_ = std::move(fn); }

  // Start-up, before the workers start: adds every servable archive of
  // config.model_repository to the registry (workers load them as they start).
  // `configured`: the archives of the configuration's model lines, which it leaves alone.
  // An error: the folder itself cannot be used, and shoald should not start.
  Status Start(const std::vector<ArchiveRef>& configured);
  // SIGHUP: reads config.model_repository (a reload may have changed it) again and brings
  // the models in line with it. A folder that cannot be read changes nothing.
  void Reconcile();
  // A worker starting up could not load `model`: if it is one of the repository's, it is
  // unloaded, reported as its file's problem, and true is returned; false: not one of its.
  bool LoadFailed(const std::string& model, const Status& why);
  // The registry marked `model` failed (a crash loop): one of the repository's is unloaded
  // and reported; the next SIGHUP loads it again.
  void Failed(const std::string& model, const std::string& why);

  // The folder served; empty when model_repository is not set.
  const std::string& folder() const { return folder_; }
  std::vector<RepositoryProblem> Problems() const;

 private:
  struct Record {
    enum class State { kLoading, kServing, kUnloading };
    std::string path;
    ArchiveRef archive;  // the file it was loaded from (the registry holds it too)
    State state = State::kLoading;
    std::optional<std::string> then_load;  // kUnloading: the path to load again once unloaded
  };
  Result<RepositoryScan> Scan();
  void Apply(const RepositoryScan& scan);
  // Opens `path` and loads it as `model` (at start-up: adds it for the workers to load).
  void Add(const std::string& model, const std::string& path);
  void Loaded(const std::string& model, const ArchiveRef& archive, const Status& st, const std::string& traceback);
  // Unloads `model` (after its accepted jobs); then loads `then_load`, if given. `why`
  // completes "FILE ..." in the log.
  void Remove(const std::string& model, const std::string& why, std::optional<std::string> then_load);
  void Unloaded(const std::string& model, const ArchiveRef& archive);
  // Records `error` as the problem of `file` and logs it.
  void Report(const std::string& file, const std::string& model, const std::string& error,
              const std::string& traceback = "");
  bool Configured(const struct stat& st) const;

  boost::asio::io_context& io_;
  const SupervisorConfig& config_;
  ModelRegistry* registry_;
  std::function<void()> on_changed_ = [] {};
  std::string folder_;
  bool starting_ = false;  // Start(): models are added for the workers, not loaded
  std::vector<std::pair<dev_t, ino_t>> configured_;  // the model lines' archives
  std::map<std::string, Record> records_;             // by model: what it loaded or loads
  std::map<std::string, RepositoryProblem> problems_;  // by file
  std::string folder_problem_;                         // the folder could not be read
  std::set<std::string> failed_;  // models whose load failed since the last reading
};

}  // namespace shoal
