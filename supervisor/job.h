// Job: one accepted inference request as the supervisor tracks it, from the client front
// (which builds it) through the scheduler (queue, deadline, batching, answer) to the worker
// pool (the slot that runs it, alone or in a batch). Plain data shared by those roles, but
// for its deadline's entry, which is the DeadlineQueue's; loop thread only.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "package_format/manifest.h"
#include "protocol/call_tree.h"
#include "protocol/descriptor.h"
#include "protocol/messages.h"
#include "supervisor/client_session.h"
#include "supervisor/deadline_queue.h"

namespace shoal {

struct Job {
  uint64_t id = 0;          // shoald's job id (also the id of the request to the worker)
  uint64_t request_id = 0;  // the client's request id, echoed in the answer
  std::weak_ptr<ClientSession> client;
  uid_t client_uid = static_cast<uid_t>(-1);  // who asked: a crash it causes is charged to them
  std::string model;        // resolved key ("name" or "name:version")
  std::vector<Descriptor> inputs;
  CallTree call;            // args/kwargs/method when the client sent them (checked); runs alone
  std::string gpu;          // PCI bus id of the GPU its GPU inputs are on (one); empty: none
  uint64_t client_id = 0;   // the connection's session id: the worker keeps its outputs apart
  bool answered = false;
  // Sent to its worker ahead of its turn (send_ahead_ms: WorkerHandle::ahead), queued there
  // behind a running job; false once that job ends and this one starts.
  bool ahead = false;
  // Its model's average run time (ms) when it started; 0: none known yet. A job is sent
  // ahead only behind one whose model is quick (send_ahead_ms).
  double expected_ms = 0;
  int worker = -1;          // where it runs: worker slot, its interpreter, its generation
  int interp = -1;
  uint64_t generation = 0;
  std::string worker_gpu;   // PCI bus id of the GPU of the worker that runs it; empty: none
  bool host_outputs = false;  // "outputs": "cpu": GPU outputs come back as host tensors
  int retries = 0;          // how many times the client allows it to be re-run after a crash
  int crashes = 0;          // workers it was running on that died
  std::chrono::steady_clock::time_point accepted;
  std::chrono::steady_clock::time_point started;  // first set when the scheduler starts it (zero: never yet)
  // Its deadline (none: no limit) and, while the scheduler watches it, its entry there
  // (supervisor/deadline_queue.h: one timer for every job's deadline).
  // The last three are the queue's alone.
  std::optional<std::chrono::steady_clock::time_point> deadline_at;
  DeadlineQueue::Entries::iterator deadline_entry;
  bool in_deadlines = false;
  bool deadline_due = false;
  // Once its deadline passed while it ran or waited in its worker's queue (sent ahead): the
  // grace before its worker is killed.
  std::unique_ptr<boost::asio::steady_timer> grace;
  // Dynamic batching (docs/architecture.md): its model's policy when that batches (null:
  // off, the one-job path). Once it runs in a batch: `batch_peers` are every member of it
  // (itself too; weak, so no member keeps another alive), and the member the worker pool
  // started the run with holds the others in `batch` (strongly: they live while the slot
  // is taken). `grace_over`: its deadline and kill_grace_ms have passed while it ran; the
  // worker is killed once every member still running is so.
  std::shared_ptr<const BatchPolicy> batching;
  std::shared_ptr<const std::vector<std::weak_ptr<Job>>> batch_peers;
  std::vector<std::shared_ptr<Job>> batch;
  bool grace_over = false;
};

// A worker's answer to a request, or (reply == nullptr) why none will come: WORKER_CRASHED
// when the worker died first, UNAVAILABLE when shoald stopped first.
using ReplyFn = std::function<void(const Status& st, const MapView* reply)>;

}  // namespace shoal
