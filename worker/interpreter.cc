#include "worker/interpreter.h"

#include "package_format/manifest.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "protocol/channel.h"

namespace shoal {

namespace {

Status TakeError(const std::string& what, char* error) {
  Status st = Status::Internal(what + (error ? error : "unknown error"));
  free(error);
  return st;
}

// _shoal_host.private_extension, called by interpreter `ctx` under its own GIL.
int PrepareExtension(void* ctx, const char* origin, const char* fullname, char** copy, char** error) {
  auto* copies = static_cast<InterpreterCopies*>(ctx);
  auto r = copies->PrepareExtension(origin, fullname);
  if (!r.ok()) {
    *error = strdup(r.status().message().c_str());
    return -1;
  }
  *copy = strdup(r->c_str());
  return 0;
}

}  // namespace

std::string PyhostPath() {
  if (const char* p = getenv("SHOAL_PYHOST"); p != nullptr && *p != '\0') return p;
  std::error_code ec;
  auto beside = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path().parent_path() / "lib" / "shoal" /
                "libshoal_pyhost.so";
  if (std::filesystem::exists(beside, ec)) return beside.string();
  return SHOAL_PYHOST_INSTALL_PATH;
}

Result<std::unique_ptr<Interpreter>> Interpreter::Start(const std::string& python_dir, const std::string& copies_dir,
                                                        int index) {
  std::unique_ptr<Interpreter> it(new Interpreter());
  it->index_ = index;
#ifdef SHOAL_HOSTED_BY_PYTHON
  // shoal-worker-py: the interpreter python3 started, this process's only one.
  if (!copies_dir.empty() || index != 0) {
    return Status::BadRequest("shoal-worker-py runs one interpreter; shoal-worker runs several");
  }
  it->api_ = shoal_pyhost_api();
#else
  std::string lib = PyhostPath();
  int flags = RTLD_NOW | RTLD_GLOBAL;
  if (!copies_dir.empty()) {
    it->copies_ = std::make_unique<InterpreterCopies>(copies_dir, index);
    auto copy = it->copies_->PrepareHost(SHOAL_LIBPYTHON_PATH, lib);
    if (!copy.ok()) {
      return Status(copy.status().code(), "interpreter " + std::to_string(index) +
                                              ": cannot make its private library copies in " + it->copies_->dir() +
                                              ": " + copy.status().message());
    }
    lib = *copy;
    flags = RTLD_NOW | RTLD_LOCAL;
  }
  void* h = dlopen(lib.c_str(), flags);
  if (h == nullptr) return Status::Internal("cannot load " + lib + ": " + dlerror());
  auto api_fn = reinterpret_cast<ShoalPyhostApiFn>(dlsym(h, "shoal_pyhost_api"));
  if (api_fn == nullptr || api_fn()->abi != kShoalPyhostAbi) {
    return Status::Internal(lib + " is not a libshoal_pyhost of this shoal-worker (rebuild or reinstall shoal)");
  }
  it->api_ = api_fn();
#endif
  char* error = nullptr;
  if (it->api_->start(python_dir.c_str(), index, it->copies_ ? PrepareExtension : nullptr, it->copies_.get(),
                      &error) != 0) {
    return TakeError(it->copies_ ? "interpreter " + std::to_string(index) + ": " : "", error);
  }
  return it;
}

Status Interpreter::CreateRunner(int slot) {
  char* error = nullptr;
  if (api_->create_runner(slot, index_, &error) != 0) return TakeError("", error);
  return Status::Ok();
}

Result<std::vector<std::string>> Interpreter::ImportFolders() {
  char* paths = nullptr;
  char* error = nullptr;
  if (api_->import_folders(&paths, &error) != 0) return TakeError("", error);
  std::vector<std::string> out;
  std::string all = paths;
  free(paths);
  for (size_t at = 0; at < all.size();) {
    size_t end = all.find('\n', at);
    if (end == std::string::npos) end = all.size();
    if (end > at) out.push_back(all.substr(at, end - at));
    at = end + 1;
  }
  return out;
}

Status Interpreter::EnterSandbox(const std::string& tmp_dir, bool confined,
                                 const std::vector<std::pair<std::string, std::string>>& env) {
  std::string lines;
  for (const auto& [key, value] : env) lines += key + "=" + value + "\n";
  char* error = nullptr;
  if (api_->enter_sandbox(tmp_dir.c_str(), confined ? 1 : 0, lines.c_str(), &error) != 0) {
    return TakeError("", error);
  }
  return Status::Ok();
}

Status Interpreter::SelfTest() {
  char* error = nullptr;
  if (api_->self_test(&error) != 0) return TakeError("", error);
  return Status::Ok();
}

Status Interpreter::Freeze() {
  char* error = nullptr;
  if (api_->freeze(&error) != 0) return TakeError("", error);
  return Status::Ok();
}

Result<EncodedReply> Interpreter::Handle(const std::string& body, std::vector<int>* fds) {
  size_t n = fds->size();
  char* reply = nullptr;
  size_t len = 0;
  char* error = nullptr;
  // A batch's bundle carries the fds of every member's reply (protocol/reply_bundle.h).
  int out_fds[kMaxFdsPerFrame * kMaxBatch];
  size_t n_out = kMaxFdsPerFrame * kMaxBatch;
  int rc = api_->handle(body.data(), body.size(), fds->data(), &n, &reply, &len, out_fds, &n_out, &error);
  fds->resize(n);
  if (rc != 0) return TakeError("", error);
  EncodedReply out;
  out.body.assign(reply ? reply : "", len);
  out.fds.assign(out_fds, out_fds + n_out);
  free(reply);
  return out;
}

std::string Interpreter::Release(uint64_t arena, const std::vector<uint64_t>& blocks, bool notice) {
  char text[256];  // {"v":1,"op":"usage","usage":{"owner","bytes","arenas"}}: under 100 bytes
  size_t len = 0;
  if (api_->release(arena, blocks.data(), blocks.size(), notice ? text : nullptr, sizeof(text), &len) != 0) return "";
  return notice ? std::string(text, len) : "";
}

}  // namespace shoal
