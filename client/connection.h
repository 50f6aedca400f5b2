// ClientConnection: the C++ client's connection to shoald with many requests in flight
// (docs/protocol.md: every reply carries its request's id, and replies come in any order).
// python/shoal/_connection.py is the Python client's counterpart and works the same way.
//
// Requests are written under the writer's send lock (protocol/client_writer.h, which sends
// releases too). Whichever thread holds the *reading role* reads replies, matches each to
// its job by id and completes the job. A thread that waits for its own job (Wait) takes
// the role when it is free, so Infer reads its own reply with no thread hand-off; jobs
// nobody waits on (InferAsync's futures) are read by a pump thread, started with the first
// of them, which gives the role up whenever a waiter asks for it.
//
// Every job completes exactly once: with its reply, with TIMEOUT once its deadline passes
// (the request's own deadline plus a margin: this covers a stopped or wedged shoald), or
// with UNAVAILABLE when the connection is lost or closed. Who completes a job is claimed
// under mu_; the completion runs outside it. The reply of a job completed otherwise is
// still read when it comes: its output blocks are released to their worker and the arenas
// it announces are mapped, so the fds that ride with later replies stay in step.
//
// Thread-safety: every public method may be called from any thread, except out_arenas()
// (the reading thread only: a Completion may use it). The destructor fails the jobs still
// in flight and joins the pump; nobody may be calling in then.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <msgpack.hpp>

#include "protocol/frame.h"
#include "shoal/status.h"

namespace shoal {

class Arena;
class ClientWriter;

class ClientConnection {
 public:
  using Clock = std::chrono::steady_clock;
  // How long past a request's own deadline a job waits for shoald's answer before it
  // completes with TIMEOUT (shoald answers at the deadline; this covers a stopped shoald).
  static constexpr std::chrono::milliseconds kAnswerMargin{2000};
  // How often the reader looks at deadlines while jobs nobody waits for are in flight: one
  // submitted while it blocks in recvmsg may have the earliest (a waiter enforces its own).
  static constexpr std::chrono::milliseconds kRecheck{250};
  // A job's one completion: its ok reply, or what went wrong (the reply's error, TIMEOUT,
  // UNAVAILABLE). Runs on the reading thread, with no lock held.
  using Completion = std::function<void(Result<msgpack::object_handle>)>;
  struct Job;

  // Takes `sock` (connected, its peer checked); `path` names shoald in messages.
  ClientConnection(int sock, std::string path);
  ~ClientConnection();
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  // The id for the next request.
  uint64_t NextId();
  // Registers job `id` and sends `body` (a request with that id) with `fds` on its first
  // byte. `what` ("infer request 7 (model 'm')") goes into messages; `wait`: how long the
  // job waits for its reply before it completes with TIMEOUT (none: no limit). `attended`:
  // the caller calls Wait(job) at once; otherwise the pump thread reads its reply. `hold`
  // is kept until the reply is read or the connection is gone, whatever completed the job
  // (the input blocks a worker may still read). An error (the connection is gone) means
  // `done` never runs.
  Result<std::shared_ptr<Job>> Submit(uint64_t id, std::string_view body, const std::vector<int>& fds,
                                      std::string what, std::optional<std::chrono::milliseconds> wait,
                                      Completion done, bool attended, std::shared_ptr<const void> hold = nullptr);
  // Returns once the job (submitted attended) has completed; reads replies meanwhile
  // while no other thread does.
  void Wait(const std::shared_ptr<Job>& job);

  const std::shared_ptr<ClientWriter>& writer() const { return writer_; }
  // Output arenas the answers announced, by the client's id. The reading thread only.
  const std::map<uint64_t, std::shared_ptr<Arena>>& out_arenas() const { return out_arenas_; }

 private:
  void PumpLoop();
  // Reads and dispatches replies while `keep_going()`; the caller holds the role.
  void Read(const std::function<bool()>& keep_going);
  // Completes the jobs past their deadlines; returns whether any was, and when to look again.
  std::pair<bool, std::optional<Clock::time_point>> ExpireOverdue();
  void Dispatch(const std::string& body);
  // Maps the arenas an answer announces; their fds came with it, in order.
  Status TakeArenas(const msgpack::object& reply);
  void ReleaseOutputs(const msgpack::object& reply);
  // After a failed send: what shoald said before it hung up, if nobody else reads.
  void ReadParting();
  void ConnectionLost(const Status& why);
  Status LostStatus(const std::string& what) const;  // REQUIRES(mu_)
  Status LateStatus(const Job& job) const;
  // Runs a claimed job's completion (`done`, taken from it under mu_), then marks it settled.
  void Finish(const std::shared_ptr<Job>& job, Completion done, Result<msgpack::object_handle> outcome);
  void ReleaseRole();
  bool UnattendedLocked() const;  // REQUIRES(mu_)

  const int sock_;
  const std::string path_;
  std::shared_ptr<ClientWriter> writer_;  // shared with result tensors, which may outlive us
  // The reading role's own state: only the thread holding the role touches these.
  FrameReader frames_;
  std::vector<int> fds_;  // received, not yet claimed by an answer
  std::map<uint64_t, std::shared_ptr<Arena>> out_arenas_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // waiters and the pump sleep here
  std::map<uint64_t, std::shared_ptr<Job>> jobs_;  // GUARDED_BY(mu_): replies not yet read
  uint64_t next_id_ = 1;                            // GUARDED_BY(mu_)
  std::optional<std::thread::id> reader_;           // GUARDED_BY(mu_): who holds the role
  int queued_ = 0;                                  // GUARDED_BY(mu_): waiters wanting the role
  std::optional<Status> lost_;                      // GUARDED_BY(mu_): why the connection is gone
  std::optional<Status> parting_;                   // GUARDED_BY(mu_): an id-0 error shoald sent
  bool closing_ = false;                            // GUARDED_BY(mu_)
  std::thread pump_;                                // GUARDED_BY(mu_): started once
};

}  // namespace shoal
