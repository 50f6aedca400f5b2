// The thread primitives of a worker with several interpreters (worker/router.h uses them):
//
//   ReplySink  the one socket to shoald, shared by every thread that replies
//   Gather     one message handled by every interpreter, answered once when all are done
//   Task       one message queued for one interpreter
//   Lane       one interpreter's thread and its FIFO queue
//
// Threading: ReplySink::Send and Gather::Add may be called from any thread (each has its
// own mutex). Lane::Push and load() are called by the routing thread; everything else a
// Lane does runs on its own thread, the only one that touches its interpreter after Start.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "worker/interpreter.h"
#include "worker/job_deadline.h"
#include "worker/torchscript.h"

namespace shoal {

// Serialises replies of several threads onto the one socket. A failed send means shoald
// is gone: the process exits.
class ReplySink {
 public:
  // `fd` must stay open while this sink is in use.
  explicit ReplySink(int fd) : fd_(fd) {}
  ReplySink(const ReplySink&) = delete;
  ReplySink& operator=(const ReplySink&) = delete;

  // Sends `body` as one frame with `fds` attached; an empty body sends nothing.
  void Send(const std::string& body, const std::vector<int>& fds = {});
  void Send(const EncodedReply& reply) { Send(reply.body, reply.fds); }
  // A batched infer's reply: each member's reply as its own frame (a bundle that does not
  // split, such as a runner's error, goes as it is).
  void SendBatch(const EncodedReply& bundle);

 private:
  const int fd_;
  std::mutex mu_;  // one frame at a time on fd_
};

// Replies of one message handled by every interpreter: the first error, else the first
// reply, sent when the last interpreter is done.
class Gather {
 public:
  explicit Gather(int n) : remaining_(n) {}
  Gather(const Gather&) = delete;
  Gather& operator=(const Gather&) = delete;

  // One interpreter's reply; the last one sends the gathered reply to `sink`, with the
  // fds of the reply it kept (a load's uploaded GPU weights; they stay the runner's).
  void Add(const EncodedReply& reply, ReplySink* sink);

 private:
  std::mutex mu_;
  int remaining_;        // guarded by mu_
  EncodedReply reply_;   // guarded by mu_
  bool failed_ = false; // guarded by mu_
};

struct Task {
  std::string body;
  std::vector<int> fds;            // this interpreter's own copies of the fds it carries
  bool torchscript = false;        // a TorchScript job: no Python
  bool batch = false;              // a batched infer: the reply is a bundle (protocol/reply_bundle.h)
  JobDeadline deadline;            // an infer's: past it when its turn comes, it is not run
  std::shared_ptr<Gather> gather;  // set when every interpreter handles it
};

// One interpreter's thread and queue. The thread builds the interpreter's job runner,
// then handles its tasks in order: TorchScript jobs without the GIL, others in Python.
class Lane {
 public:
  // `interp`, `sink` and `ts` must outlive the Lane (a worker's never end: it _exits).
  Lane(Interpreter* interp, int slot, ReplySink* sink, TorchScriptModels* ts)
      : interp_(interp), slot_(slot), sink_(sink), ts_(ts) {}
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  void Start() { thread_ = std::thread([this] { Loop(); }); }
  void Push(Task t);
  // Tasks queued or running.
  int load() const { return load_.load(); }

 private:
  [[noreturn]] void Loop();

  Interpreter* const interp_;
  const int slot_;
  ReplySink* const sink_;
  TorchScriptModels* const ts_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;  // guarded by mu_
  std::atomic<int> load_{0};
};

}  // namespace shoal
