#include "shm/arena.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "shm/memfd.h"

namespace shoal {

Arena::Arena(int fd, size_t size, uint8_t *base,
             std::unique_ptr<BlockAllocator> allocator,
             std::unique_ptr<GpuMemory> gpu)
    : fd_(fd), size_(size), base_(base), allocator_(std::move(allocator)),
      gpu_(std::move(gpu)) {}

Arena::~Arena() {
  if (gpu_)
    return; // GpuMemory unmaps and closes its own fd
  munmap(base_, size_);
  if (fd_ >= 0)
    close(fd_);
}

Result<std::unique_ptr<Arena>> Arena::CreateGpu(int ordinal, size_t size) {
  auto mem = GpuMemory::Create(ordinal, size);
  if (!mem.ok())
    return mem.status();
  int fd = (*mem)->fd();
  size_t real = (*mem)->size();
  auto *base = reinterpret_cast<uint8_t *>((*mem)->address());
  return std::unique_ptr<Arena>(new Arena(fd, real, base,
                                          std::make_unique<BlockAllocator>(real),
                                          std::move(*mem)));
}

Result<std::unique_ptr<Arena>> Arena::OpenGpu(int fd, size_t size,
                                              int ordinal) {
  auto mem = GpuMemory::Import(fd, size, ordinal, false);
  if (!mem.ok())
    return mem.status();
  auto *base = reinterpret_cast<uint8_t *>((*mem)->address());
  return std::unique_ptr<Arena>(
      new Arena(-1, size, base, nullptr, std::move(*mem)));
}

namespace {
Result<uint8_t *> MapShared(int fd, size_t size) {
  void *p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    return Status::FromErrno(
        "mmap of an arena of " + std::to_string(size) + " bytes", errno);
  return static_cast<uint8_t *>(p);
}
} // namespace

Result<std::unique_ptr<Arena>> Arena::Create(const std::string &name,
                                             size_t size) {
  if (size < 4096)
    return Status::BadRequest("arena size must be at least 4096 bytes");
  auto fd = CreateArenaFd(name, size);
  if (!fd.ok())
    return fd.status();
  auto base = MapShared(*fd, size);
  if (!base.ok()) {
    close(*fd);
    return base.status();
  }
  return std::unique_ptr<Arena>(
      new Arena(*fd, size, *base, std::make_unique<BlockAllocator>(size)));
}

Result<std::unique_ptr<Arena>> Arena::Open(int fd) {
  auto size = CheckArenaFd(fd);
  if (!size.ok()) {
    close(fd);
    return size.status();
  }
  auto base = MapShared(fd, *size);
  close(fd); // the mapping keeps the memory; a peer never passes the arena on
  if (!base.ok())
    return base.status();
  return std::unique_ptr<Arena>(new Arena(-1, *size, *base, nullptr));
}

Result<uint64_t> Arena::Allocate(size_t nbytes) {
  if (!allocator_)
    return Status::Internal(
        "blocks of a peer's arena are allocated by its owner only");
  std::lock_guard<std::mutex> lock(mu_);
  auto off = allocator_->Allocate(nbytes);
  if (!off.ok()) {
    return Status(Code::kArenaFull,
                  "an arena of " + std::to_string(size_) + " bytes has " +
                      off.status().message() +
                      "; use a larger arena or release results sooner");
  }
  return off;
}

bool Arena::Free(uint64_t offset) {
  if (!allocator_)
    return false;
  std::lock_guard<std::mutex> lock(mu_);
  return allocator_->Free(offset);
}

size_t Arena::FreeBytes() const {
  if (!allocator_)
    return 0;
  std::lock_guard<std::mutex> lock(mu_);
  return allocator_->free_bytes();
}

size_t Arena::UsedBytes() const {
  if (!allocator_)
    return 0;
  std::lock_guard<std::mutex> lock(mu_);
  return allocator_->used_bytes();
}

} // namespace shoal
