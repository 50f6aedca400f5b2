#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include "shm/arena.h"
#include "shm/memfd.h"
#include "tests/cpp/catch.h"

using namespace shoal;

TEST_CASE("arena blocks are 64-byte aligned, distinct and reusable", "[shm]") {
  auto a = Arena::Create("test", 1 << 20);
  REQUIRE(a.ok());
  std::set<uint64_t> offsets;
  for (int i = 0; i < 100; ++i) {
    auto off = (*a)->Allocate(1000 + i);
    REQUIRE(off.ok());
    REQUIRE(*off % Arena::kAlignment == 0);
    REQUIRE((*a)->Contains(*off, 1000 + i));
    offsets.insert(*off);
  }
  REQUIRE(offsets.size() == 100);
  size_t before = (*a)->FreeBytes();
  for (auto off : offsets) (*a)->Free(off);
  REQUIRE((*a)->FreeBytes() > before + 100 * 1000);
}

TEST_CASE("a full arena says how big the request was", "[shm]") {
  auto a = Arena::Create("test", 64 * 1024);
  auto off = (*a)->Allocate(1 << 20);
  REQUIRE(off.status().code() == Code::kArenaFull);
  REQUIRE(off.status().message().find("1048576 bytes") != std::string::npos);
}

TEST_CASE("a second mapping of the same arena shares blocks and bytes", "[shm]") {
  auto a = Arena::Create("test", 1 << 20);
  auto b = Arena::Open(dup((*a)->fd()));  // as a worker opens the client's arena
  REQUIRE(b.ok());
  REQUIRE((*b)->size() == (*a)->size());
  auto off = (*a)->Allocate(256);
  std::memcpy((*a)->base() + *off, "shoal", 6);
  REQUIRE(std::string(reinterpret_cast<char*>((*b)->base() + *off)) == "shoal");
  // allocations from either side never overlap
  auto off2 = (*b)->Allocate(256);
  REQUIRE(*off2 != *off);
  (*b)->Free(*off);  // a block may be freed by the other side
  (*a)->Free(*off2);
}

TEST_CASE("arena fds must be sealed memfds", "[shm]") {
  int p[2];
  REQUIRE(pipe(p) == 0);
  REQUIRE(CheckArenaFd(p[0]).status().message().find("not a memfd") != std::string::npos);
  close(p[0]);
  close(p[1]);
  int unsealed = memfd_create("x", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  REQUIRE(ftruncate(unsealed, 4096) == 0);
  REQUIRE(CheckArenaFd(unsealed).status().message().find("F_SEAL_SHRINK") != std::string::npos);
  auto opened = Arena::Open(unsealed);  // takes and closes the fd on failure
  REQUIRE_FALSE(opened.ok());
  auto fd = CreateArenaFd("sealed", 8192);
  REQUIRE(*CheckArenaFd(*fd) == 8192);
  REQUIRE(ftruncate(*fd, 100) != 0);  // the owner cannot shrink it under a worker
  close(*fd);
}
