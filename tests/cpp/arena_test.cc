#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "shm/arena.h"
#include "shm/block_allocator.h"
#include "shm/client_arena_maps.h"
#include "shm/memfd.h"
#include "shm/output_arenas.h"
#include "tests/cpp/catch.h"

using namespace shoal;

// ---- the allocator: bookkeeping in the owner's private memory ---------------------------

TEST_CASE("the allocator never hands out offset 0 and keeps blocks 64-byte aligned", "[shm]") {
  BlockAllocator a(4096);
  auto first = a.Allocate(1);
  REQUIRE(first.ok());
  CHECK(*first == BlockAllocator::kFirstBlock);
  CHECK(a.capacity() == 4096 - 64);
  auto second = a.Allocate(65);
  CHECK(*second == 128);
  CHECK(a.used_bytes() == 64 + 128);
}

TEST_CASE("the allocator frees only blocks it handed out, once", "[shm]") {
  BlockAllocator a(1 << 16);
  auto b = *a.Allocate(1000);
  uint64_t used = a.used_bytes();
  CHECK_FALSE(a.Free(0));          // "block 0": never a block
  CHECK_FALSE(a.Free(b + 64));     // inside a block
  CHECK_FALSE(a.Free(1 << 20));    // past the end
  CHECK(a.used_bytes() == used);   // nothing changed
  CHECK(a.Free(b));
  CHECK_FALSE(a.Free(b));          // twice
  CHECK(a.used_bytes() == 0);
  CHECK(a.free_bytes() == a.capacity());
}

TEST_CASE("freed neighbours merge back into one range", "[shm]") {
  BlockAllocator a(64 + 3 * 1024);
  auto x = *a.Allocate(1024), y = *a.Allocate(1024), z = *a.Allocate(1024);
  CHECK_FALSE(a.Allocate(1).ok());
  CHECK(a.Free(x));
  CHECK(a.Free(z));
  CHECK_FALSE(a.Allocate(2048).ok());  // two holes of 1 KiB
  CHECK(a.Free(y));
  auto all = a.Allocate(3 * 1024);     // merged: one range again
  REQUIRE(all.ok());
  CHECK(*all == x);
}

TEST_CASE("scribbling over every byte of an arena cannot disturb its owner's allocator", "[shm]") {
  auto a = Arena::Create("test", 1 << 16);
  std::vector<uint64_t> blocks;
  for (int i = 0; i < 10; ++i) blocks.push_back(*(*a)->Allocate(1000));
  std::memset((*a)->base(), 0xff, (*a)->size());  // a hostile peer writes everything, header included
  for (auto b : blocks) CHECK((*a)->Free(b));
  CHECK((*a)->UsedBytes() == 0);
  CHECK((*a)->Allocate(1000).ok());
}

// ---- arenas -----------------------------------------------------------------------------

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
  for (auto off : offsets) REQUIRE((*a)->Free(off));
  REQUIRE((*a)->FreeBytes() > before + 100 * 1000);
}

TEST_CASE("a full arena says how big the request was", "[shm]") {
  auto a = Arena::Create("test", 64 * 1024);
  auto off = (*a)->Allocate(1 << 20);
  REQUIRE(off.status().code() == Code::kArenaFull);
  REQUIRE(off.status().message().find("1048576 bytes") != std::string::npos);
}

TEST_CASE("a peer's mapping shares the bytes but never allocates or frees", "[shm]") {
  auto a = Arena::Create("test", 1 << 20);
  auto b = Arena::Open(dup((*a)->fd()));  // as a worker opens the client's arena
  REQUIRE(b.ok());
  REQUIRE((*b)->size() == (*a)->size());
  CHECK((*a)->owned());
  CHECK_FALSE((*b)->owned());
  auto off = (*a)->Allocate(256);
  std::memcpy((*a)->base() + *off, "shoal", 6);
  REQUIRE(std::string(reinterpret_cast<char*>((*b)->base() + *off)) == "shoal");
  CHECK_FALSE((*b)->Allocate(256).ok());  // only the owner allocates
  CHECK_FALSE((*b)->Free(*off));          // ... and frees
  CHECK((*a)->Free(*off));
}

TEST_CASE("a worker's output arenas: one set per client, freed only by offsets handed out", "[shm]") {
  OutputArenas out(OutputOwnerTag(1, true));
  OutputLimits limits{1 << 16, 2};
  auto x = out.Allocate(/*client=*/1, 1000, limits);
  auto y = out.Allocate(/*client=*/2, 1000, limits);
  REQUIRE((x.ok() && y.ok()));
  CHECK(x->arena != y->arena);  // no client reads another's outputs
  CHECK(IsWorkerArena(x->arena));
  CHECK(OwnerOfWorkerArena(x->arena) == OutputOwnerTag(1, true));
  CHECK(out.TakeNew(1).size() == 1);
  CHECK(out.TakeNew(1).empty());  // announced once
  uint64_t used = out.Usage().bytes;
  CHECK_FALSE(out.Free(x->arena, 0));
  CHECK_FALSE(out.Free(x->arena, x->offset + 64));
  CHECK_FALSE(out.Free(y->arena ^ 1, y->offset));
  CHECK(out.Usage().bytes == used);
  CHECK(out.Free(x->arena, x->offset));
  CHECK_FALSE(out.Free(x->arena, x->offset));
  // Full: a second arena, then ARENA_FULL naming the setting.
  REQUIRE(out.Allocate(1, 60000, limits).ok());
  REQUIRE(out.Allocate(1, 60000, limits).ok());
  auto full = out.Allocate(1, 60000, limits);
  CHECK(full.status().code() == Code::kArenaFull);
  CHECK(full.status().message().find("output_arenas") != std::string::npos);
  out.DropClient(1);
  CHECK(out.Usage().arenas == 1);  // client 2's
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

// ---- client arenas a worker maps on demand (shm/client_arena_maps.h) ------------------

namespace {
// This process's address space, in bytes.
uint64_t VmSize() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmSize:", 0) == 0) return std::strtoull(line.c_str() + 7, nullptr, 10) << 10;
  }
  return 0;
}
}  // namespace

TEST_CASE("client arenas are mapped when first used, and idle ones unmapped when mapping fails", "[shm]") {
  constexpr size_t kArena = 48 << 20;
  ClientArenaMaps maps;
  for (uint64_t id = 1; id <= 3; ++id) {
    auto fd = CreateArenaFd("client", kArena);
    REQUIRE(fd.ok());
    maps.Add(id, *fd);
  }
  CHECK(maps.mapped() == 0);
  CHECK(maps.Map(9, {9}).status().code() == Code::kUnavailable);  // never sent
  // In a child whose address space has room for two of them at once.
  pid_t child = fork();
  if (child == 0) {
    rlimit rl{VmSize() + 100 * (1 << 20), VmSize() + 100 * (1 << 20)};
    if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(10);
    auto one = maps.Map(1, {1});
    if (!one.ok()) _exit(11);
    (*one)->base()[0] = 7;
    if (!maps.Map(2, {2}).ok() || maps.mapped() != 2) _exit(12);
    // A third fits only once idle mappings go; arena 2, which this job also needs, stays.
    auto held = *one;  // a holder (a running job's tensor) keeps arena 1's memory
    one = Status::Internal("dropped");
    if (maps.Map(3, {2, 3}).ok()) _exit(13);  // 1 (held) and 2 (kept) leave no room
    if (maps.mapped() != 1) _exit(14);         // ... but 1 left the table
    if (held->base()[0] != 7) _exit(15);       // and its holder still reads it
    held.reset();                              // the last holder lets go: unmapped
    if (!maps.Map(3, {3}).ok() || maps.mapped() != 2) _exit(16);  // room for 2 and 3
    auto again = maps.Map(1, {1});             // 2 and 3 are idle: dropped to make room,
    if (!again.ok() || maps.mapped() != 1) _exit(17);
    if ((*again)->base()[0] != 7) _exit(18);   // and 1 is mapped again from its fd
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  maps.Drop(2);
  CHECK(maps.Map(2, {2}).status().code() == Code::kUnavailable);
}
