#include "shm/arena.h"

#include <sys/mman.h>
#include <unistd.h>

#include <boost/interprocess/managed_external_buffer.hpp>
#include <cerrno>

#include "shm/memfd.h"

namespace shoal {

namespace bip = boost::interprocess;

// The allocator state lives in the arena and is shared by processes: it needs the
// process-shared mutex family (the stock managed_external_buffer uses a null mutex).
using SharedBuffer =
    bip::basic_managed_external_buffer<char, bip::rbtree_best_fit<bip::mutex_family>, bip::iset_index>;

struct Arena::Segment {
  SharedBuffer buffer;
};

Arena::Arena(int fd, size_t size, uint8_t* base, std::unique_ptr<Segment> segment)
    : fd_(fd), size_(size), base_(base), segment_(std::move(segment)) {}

Arena::~Arena() {
  segment_.reset();  // the segment object refers into the mapping: drop it first
  munmap(base_, size_);
  close(fd_);
}

namespace {
Result<uint8_t*> MapShared(int fd, size_t size) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno("mmap of arena", errno);
  return static_cast<uint8_t*>(p);
}
}  // namespace

Result<std::unique_ptr<Arena>> Arena::Create(const std::string& name, size_t size) {
  if (size < 4096) return Status::BadRequest("arena size must be at least 4096 bytes");
  auto fd = CreateArenaFd(name, size);
  if (!fd.ok()) return fd.status();
  auto base = MapShared(*fd, size);
  if (!base.ok()) {
    close(*fd);
    return base.status();
  }
  auto seg = std::make_unique<Segment>();
  seg->buffer = SharedBuffer(bip::create_only, *base, size);
  return std::unique_ptr<Arena>(new Arena(*fd, size, *base, std::move(seg)));
}

Result<std::unique_ptr<Arena>> Arena::Open(int fd) {
  auto size = CheckArenaFd(fd);
  if (!size.ok()) {
    close(fd);
    return size.status();
  }
  auto base = MapShared(fd, *size);
  if (!base.ok()) {
    close(fd);
    return base.status();
  }
  auto seg = std::make_unique<Segment>();
  try {
    seg->buffer = SharedBuffer(bip::open_only, *base, *size);
  } catch (const std::exception& e) {
    munmap(*base, *size);
    close(fd);
    return Status::BadRequest(std::string("the arena holds no shoal allocator: ") + e.what());
  }
  return std::unique_ptr<Arena>(new Arena(fd, *size, *base, std::move(seg)));
}

Result<uint64_t> Arena::Allocate(size_t nbytes) {
  if (nbytes == 0) nbytes = 1;
  void* p = segment_->buffer.allocate_aligned(nbytes, kAlignment, std::nothrow);
  if (p == nullptr) {
    return Status(Code::kArenaFull,
                  "no room for a block of " + std::to_string(nbytes) + " bytes in an arena of " +
                      std::to_string(size_) + " bytes (" + std::to_string(FreeBytes()) +
                      " free); use a larger arena or release results sooner");
  }
  return static_cast<uint64_t>(static_cast<uint8_t*>(p) - base_);
}

void Arena::Free(uint64_t offset) { segment_->buffer.deallocate(base_ + offset); }

size_t Arena::FreeBytes() const { return segment_->buffer.get_free_memory(); }

}  // namespace shoal
