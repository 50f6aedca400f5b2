// ArchiveFile: the open archive a model is loaded from, held by the model registry for
// the model's lifetime; every worker that loads the model (replacements, new workers, a
// fresh zygote's) is sent this very file and loads from it, never from a path.
//
// shoald opens no path on a client's behalf: a client's `load` passes the file it opened
// with its own rights (SCM_RIGHTS) and Adopt validates it (a regular file, open read-only,
// a servable archive). Only shoald's own loads (the configuration file, `--model`,
// `model_repository`) Open a path, with shoald's own rights. `label` is the path as named
// (by the client or the configuration): a display name only, shown to admins and in
// errors; nothing opens it.
// Thread-safety: immutable once made; Unchanged() only reads (fstat).
#pragma once

#include <sys/stat.h>

#include <memory>
#include <string>

#include "package_format/manifest.h"
#include "shoal/status.h"
#include "supervisor/async_channel.h"

namespace shoal {

class ArchiveFile {
 public:
  // `fd` (taken) must have been validated as Adopt does; tests pass any open file.
  ArchiveFile(int fd, std::string label);
  ArchiveFile(const ArchiveFile&) = delete;
  ArchiveFile& operator=(const ArchiveFile&) = delete;

  // Takes `fd` (closed on error too). Errors speak only of the file given, as `label`.
  // `entry`: the pickle a load asks to serve (checked with CheckEntryName first; empty:
  // the manifest's or model/model.pkl), which the archive must hold as a pickle; a
  // TorchScript archive takes none.
  static Result<std::shared_ptr<const ArchiveFile>> Adopt(int fd, std::string label, const std::string& entry = {});
  // shoald's own act (configuration, --model, model_repository): opens `path` with
  // shoald's rights (O_RDONLY | O_CLOEXEC, O_NONBLOCK so that a FIFO cannot hang it),
  // then Adopt.
  static Result<std::shared_ptr<const ArchiveFile>> Open(const std::string& path);

  // Shared with the messages that carry it to workers (AsyncChannel::Send).
  const std::shared_ptr<OwnedFd>& fd() const { return fd_; }
  const std::string& label() const { return label_; }
  // The file as it was validated (fstat): who owns it, its mode, its identity (st_dev,
  // st_ino) and the size and modification time Unchanged() compares with.
  const struct stat& checked() const { return checked_; }
  // What its manifest says shoald must allow (package_format/manifest.h), read when it was
  // adopted; the defaults for a file made directly (tests).
  const ManifestPolicy& policy() const { return policy_; }
  // The entry pickle workers serve (ArchiveInfo::entry); empty for TorchScript.
  const std::string& entry() const { return entry_; }
  // A TorchScript archive (run by libtorch in the worker, not by the Python runner).
  bool torchscript() const { return torchscript_; }
  // Whether its tensors were saved from a CUDA device (where a load's "auto" puts them).
  bool saved_on_cuda() const { return saved_on_cuda_; }
  // OK while the file has the size and modification time it was validated with; else
  // why (rewritten in place since: workers would load what shoald never checked, or fault
  // on a truncated mapping).
  Status Unchanged(const std::string& model) const;

 private:
  std::shared_ptr<OwnedFd> fd_;
  std::string label_;
  struct stat checked_ {};
  ManifestPolicy policy_;
  std::string entry_;
  bool torchscript_ = false;
  bool saved_on_cuda_ = false;
};

using ArchiveRef = std::shared_ptr<const ArchiveFile>;

}  // namespace shoal
