// The writing side of a client's connection (protocol/client_writer.h).
#include "protocol/client_writer.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <set>
#include <string>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "shm/gpu_memory.h"

namespace shoal {

namespace {
constexpr size_t kBlocksPerNotice = 4096;
}  // namespace

ClientWriter::ClientWriter(int sock) : sock_(fcntl(sock, F_DUPFD_CLOEXEC, 0)), dup_error_(sock_ < 0 ? errno : 0) {}

ClientWriter::~ClientWriter() { Stop(); }

Status ClientWriter::Send(std::string_view data, const std::vector<int>& fds) {
  std::lock_guard<std::mutex> lock(send_mu_);
  if (dup_error_ != 0) return Status::FromErrno("cannot write to shoald (dup of the socket)", dup_error_);
  if (sock_ < 0) return Status(Code::kUnavailable, "the connection to shoald is closed");
  // Host releases queued before this request go first: its job may need the room they free.
  if (auto st = SendReleases(Take(/*host_only=*/true)); !st.ok()) return st;
  return SendAll(sock_, data, fds);
}

void ClientWriter::Release(uint64_t arena, uint64_t block, int gpu) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_) return;
  Queued& q = queued_[arena];
  q.gpu = gpu;
  q.blocks.push_back(block);
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
  wake_.notify_one();
}

ClientWriter::Releases ClientWriter::Take(bool host_only) {
  Releases taken;
  std::lock_guard<std::mutex> lock(mu_);
  if (!host_only) {
    taken.swap(queued_);
    return taken;
  }
  for (auto it = queued_.begin(); it != queued_.end();) {
    if (it->second.gpu < 0) {
      taken.insert(queued_.extract(it++));
    } else {
      ++it;
    }
  }
  return taken;
}

bool ClientWriter::WaitForGpus(Releases* taken) {
  std::set<int> gpus;
  for (const auto& [arena, q] : *taken) {
    if (q.gpu >= 0) gpus.insert(q.gpu);
  }
  std::set<int> unfinished;
  for (int g : gpus) {
    bool finished = false;
    (void)SynchronizeGpu(g, &finished);  // a broken context (finished) runs nothing more
    if (!finished) unfinished.insert(g);
  }
  if (unfinished.empty()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = taken->begin(); it != taken->end();) {
    if (unfinished.count(it->second.gpu) == 0) {
      ++it;
      continue;
    }
    Queued& q = queued_[it->first];
    q.gpu = it->second.gpu;
    q.blocks.insert(q.blocks.end(), it->second.blocks.begin(), it->second.blocks.end());
    it = taken->erase(it);
  }
  return true;
}

Status ClientWriter::SendReleases(const Releases& taken) {
  std::string data;
  for (const auto& [arena, q] : taken) {
    const auto& blocks = q.blocks;
    for (size_t i = 0; i < blocks.size(); i += kBlocksPerNotice) {
      Writer w;
      BeginNotice(&w, "release", 2);
      w.Key("arena"); w.Val(arena);
      w.Key("blocks");
      w.Val(std::vector<uint64_t>(blocks.begin() + i, blocks.begin() + std::min(blocks.size(), i + kBlocksPerNotice)));
      data += EncodeFrame(w.body());
    }
  }
  if (data.empty() || sock_ < 0) return Status::Ok();
  return SendAll(sock_, data);
}

void ClientWriter::Loop() {
  // Signals are the application's: a process-directed one (Ctrl-C) must land in a thread
  // of the application, such as one waiting for a reply, not in this one.
  sigset_t all;
  sigfillset(&all);
  for (int sync : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) sigdelset(&all, sync);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopped_) {
    wake_.wait(lock, [this] { return stopped_ || !queued_.empty(); });
    if (stopped_) break;
    lock.unlock();
    Releases taken = Take(/*host_only=*/false);
    bool put_back = WaitForGpus(&taken);  // no lock held: Send and Release go on meanwhile
    {
      std::lock_guard<std::mutex> send(send_mu_);
      (void)SendReleases(taken);  // a broken connection: the caller's next Send says so
    }
    lock.lock();
    // A GPU that could not be waited for: try again a little later, not in a spin.
    if (put_back) wake_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stopped_; });
  }
}

void ClientWriter::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();  // no Release starts it once stopped_
  // What is still queued goes now; GPU blocks only once their GPU is done (the connection's
  // end frees the rest: shoald has the worker drop this client's output arenas).
  Releases taken = Take(/*host_only=*/false);
  WaitForGpus(&taken);
  std::lock_guard<std::mutex> send(send_mu_);
  (void)SendReleases(taken);
  if (sock_ >= 0) close(sock_);
  sock_ = -1;
}

}  // namespace shoal
