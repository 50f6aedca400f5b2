#include "supervisor/archive_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "package_format/archive_reader.h"

namespace shoal {

ArchiveFile::ArchiveFile(int fd, std::string label)
    : fd_(std::make_shared<OwnedFd>(fd)), label_(std::move(label)) {
  if (fstat(fd, &checked_) != 0) checked_ = {};
}

Result<std::shared_ptr<const ArchiveFile>> ArchiveFile::Adopt(int fd, std::string label, const std::string& entry) {
  auto file = std::make_shared<ArchiveFile>(fd, std::move(label));  // closes fd on every error below
  const std::string what = "archive " + file->label_;
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return Status::FromErrno(what, errno);
  if ((flags & O_PATH) == O_PATH) {
    return Status::BadRequest(what + ": the descriptor passed is an O_PATH one; open the file for reading (O_RDONLY)");
  }
  if ((flags & O_ACCMODE) != O_RDONLY) {
    // Workers are given this very file: model code must not be able to write to it.
    return Status::BadRequest(what + ": the file passed is open for writing; pass it opened read-only (O_RDONLY)");
  }
  if (!S_ISREG(file->checked_.st_mode)) {
    return Status::BadRequest(what + ": the file passed is not a regular file; pass the archive itself");
  }
  // Broken archives are refused here, before any worker runs code from them.
  auto info = InspectArchiveFd(fd, file->label_, entry);
  if (!info.ok()) return info.status();
  if (!entry.empty() && info->kind == ArchiveKind::kTorchScript) {
    return Status::BadRequest(what + ": a TorchScript archive serves its module, it has no entry pickle to choose; "
                              "load it without an entry (its methods are allowed with methods=)");
  }
  file->entry_ = info->entry;
  file->policy_ = info->policy;
  file->torchscript_ = info->kind == ArchiveKind::kTorchScript;
  file->saved_on_cuda_ = info->saved_on_cuda;
  return std::shared_ptr<const ArchiveFile>(std::move(file));
}

Result<std::shared_ptr<const ArchiveFile>> ArchiveFile::Open(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return Status::FromErrno("cannot open archive " + path, errno);
  return Adopt(fd, path);
}

Status ArchiveFile::Unchanged(const std::string& model) const {
  struct stat now;
  if (fstat(fd_->get(), &now) != 0) return Status::FromErrno("model '" + model + "': archive " + label_, errno);
  if (now.st_size == checked_.st_size && now.st_mtim.tv_sec == checked_.st_mtim.tv_sec &&
      now.st_mtim.tv_nsec == checked_.st_mtim.tv_nsec) {
    return Status::Ok();
  }
  return Status(Code::kUnavailable, "model '" + model + "': archive " + label_ +
                                        " was rewritten in place since it was loaded (its size or modification "
                                        "time changed), so workers are not given it; load it again (shoal unload, "
                                        "shoal load; restart shoald for a configured model), and replace archives "
                                        "by renaming a new file over them rather than rewriting them");
}

}  // namespace shoal
