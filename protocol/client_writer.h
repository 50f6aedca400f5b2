// ClientWriter: the writing side of a client's connection to shoald, shared by the C++
// client (client/client.cc) and the Python client (python/shoal/client.py, through
// shoal._native.ClientWriter).
//
// Requests are sent by the caller (Send, blocking). Releases of dropped results
// (`release {arena, blocks}` notices, docs/protocol.md) are queued by whoever drops the
// last tensor over a block, from any thread, without touching the socket (Release); a
// thread of the writer's own, started with the first release, sends them as soon as they
// are queued, one notice per arena and at most 4096 blocks a notice, everything queued
// when it wakes: a client that drops its results and then goes quiet does not keep the
// worker's output memory. Frames never interleave: the socket has one writer at a time.
// Blocks of GPU arenas go back only once the GPU work this process queued before their
// release is done (the worker may reuse a block at once): the writer's thread waits for
// the GPU, holding no lock, so neither requests nor host releases wait behind a GPU; when
// the wait cannot be made, those blocks stay queued and are tried again.
// The writer sends on its own descriptor of the socket (a dup), so that closing the
// client's descriptor first never lets a late release go to whatever file reuses it.
// Thread-safety: every method may be called from any thread. The writer's thread blocks the
// asynchronous signals: they land in the application's threads (Ctrl-C in a waiting client).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "shoal/status.h"

namespace shoal {

class ClientWriter {
 public:
  // Sends on a duplicate of `sock` (a connected Unix stream socket); `sock` stays the caller's.
  explicit ClientWriter(int sock);
  ~ClientWriter();  // Stop()
  ClientWriter(const ClientWriter&) = delete;
  ClientWriter& operator=(const ClientWriter&) = delete;

  // Sends `data` (whole frames) with `fds` on its first byte, after the host releases
  // queued before it (its job may need the room they free; GPU releases go from the
  // writer's thread once their GPU is done); blocks until all is written.
  Status Send(std::string_view data, const std::vector<int>& fds = {});
  // Queues block `block` of output arena `arena` for release to the worker that owns it.
  // Never blocks on the socket. Ignored once stopped (the connection is gone: shoald has
  // the worker drop the client's output arenas). `gpu`: the arena is on this process's GPU
  // of that ordinal (-1: host memory); before the release goes, the writer waits for the
  // GPU work this process queued so far (SynchronizeGpu), which may still read the block:
  // the worker may reuse it as soon as the release arrives.
  void Release(uint64_t arena, uint64_t block, int gpu = -1);
  // Sends what is queued, stops the thread and closes the writer's descriptor.
  void Stop();

 private:
  struct Queued {
    int gpu = -1;  // the arena's GPU ordinal, -1: host memory
    std::vector<uint64_t> blocks;
  };
  using Releases = std::map<uint64_t, Queued>;  // by arena

  void Loop();
  // Takes the queued releases: all of them, or those of host arenas only. REQUIRES(!mu_)
  Releases Take(bool host_only);
  // Waits for the GPUs of `taken`'s GPU arenas; puts back those whose GPU work may still
  // run. Returns whether any went back. Holds no lock.
  bool WaitForGpus(Releases* taken);
  // Sends `taken`'s releases. REQUIRES(send_mu_).
  Status SendReleases(const Releases& taken);

  int sock_;               // ours (a dup); -1 once stopped. GUARDED_BY(send_mu_)
  const int dup_error_;    // errno of a dup that failed (no descriptor left), else 0
  std::mutex send_mu_;     // one writer on the socket at a time
  std::mutex mu_;
  std::condition_variable wake_;
  Releases queued_;  // GUARDED_BY(mu_)
  bool stopped_ = false;                              // GUARDED_BY(mu_)
  std::thread thread_;                                // GUARDED_BY(mu_): started by the first release
};

}  // namespace shoal
