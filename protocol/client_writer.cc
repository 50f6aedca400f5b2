// The writing side of a client's connection (protocol/client_writer.h).
#include "protocol/client_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
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
  // Releases queued before this request go first: its job may need the room they free.
  if (auto st = SendQueued(); !st.ok()) return st;
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

Status ClientWriter::SendQueued() {
  std::map<uint64_t, Queued> taken;
  {
    std::lock_guard<std::mutex> lock(mu_);
    taken.swap(queued_);
  }
  // Kernels this process queued before dropping a GPU block may still read it.
  std::set<int> gpus;
  for (const auto& [arena, q] : taken) {
    if (q.gpu >= 0) gpus.insert(q.gpu);
  }
  for (int g : gpus) (void)SynchronizeGpu(g);  // a broken context runs nothing more anyway
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
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopped_) {
    wake_.wait(lock, [this] { return stopped_ || !queued_.empty(); });
    if (stopped_) break;
    lock.unlock();
    {
      std::lock_guard<std::mutex> send(send_mu_);
      (void)SendQueued();  // a broken connection: the caller's next Send says so
    }
    lock.lock();
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
  std::lock_guard<std::mutex> send(send_mu_);
  (void)SendQueued();
  if (sock_ >= 0) close(sock_);
  sock_ = -1;
}

}  // namespace shoal
