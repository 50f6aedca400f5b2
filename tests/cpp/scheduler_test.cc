// The scheduler alone, over a fake slot pool: queue order, overload, deadlines, crash
// re-runs and answers (read back from a real socket).
#include <chrono>

#include "shm/memfd.h"
#include "shm/output_arenas.h"
#include "supervisor/arena_table.h"
#include "supervisor/scheduler.h"
#include "tests/cpp/catch.h"
#include "tests/cpp/supervisor_fakes.h"

using namespace shoal;
using namespace shoal::testing;

namespace {

struct Fixture : RoleFixture {
  FakeSlots slots;
  ArenaTable arenas;
  Metrics metrics;
  Scheduler scheduler{io, config, &slots, &arenas, &metrics};
  FakeClient client{io};
  uint64_t next_id = 1;

  std::shared_ptr<Job> MakeJob(const std::string& model, int retries = 0, uid_t uid = 1000) {
    auto job = std::make_shared<Job>();
    job->client_uid = uid;
    job->id = next_id;
    job->request_id = 100 + next_id++;
    job->model = model;
    job->client = client.session;
    job->client_id = client.session->id;
    job->retries = retries;
    return job;
  }
  Status Submit(const std::shared_ptr<Job>& job, uint64_t timeout_ms = 0, uint64_t* retry = nullptr) {
    uint64_t r = 0;
    return scheduler.Submit(job, timeout_ms, retry ? retry : &r);
  }
};

}  // namespace

TEST_CASE("scheduler runs jobs in arrival order as slots free up", "[scheduler]") {
  Fixture f;
  f.slots.free_slots = 2;
  f.slots.serving = {"m"};
  auto a = f.MakeJob("m"), b = f.MakeJob("m"), c = f.MakeJob("m");
  REQUIRE(f.Submit(a).ok());
  REQUIRE(f.Submit(b).ok());
  REQUIRE(f.Submit(c).ok());
  REQUIRE(f.slots.running.size() == 2);
  CHECK(f.slots.running[0].job == a);
  CHECK(f.slots.running[1].job == b);
  CHECK(f.scheduler.queued() == 1);
  f.slots.Finish(ValueReply(a->id));
  REQUIRE(f.slots.running.size() == 2);
  CHECK(f.slots.running[1].job == c);
  f.io.poll();
  auto answer = f.client.Next();
  CHECK(answer.id == a->request_id);
  CHECK(answer.ok);
  CHECK(f.scheduler.jobs_done() == 1);
}

TEST_CASE("scheduler skips jobs whose model serves nowhere yet without blocking the others", "[scheduler]") {
  Fixture f;
  f.slots.serving = {"ready"};
  auto waiting = f.MakeJob("loading"), runnable = f.MakeJob("ready");
  REQUIRE(f.Submit(waiting).ok());
  REQUIRE(f.Submit(runnable).ok());
  REQUIRE(f.slots.running.size() == 1);
  CHECK(f.slots.running[0].job == runnable);
  CHECK(f.scheduler.Queued("loading") == 1);
  CHECK(f.scheduler.Pending("ready") == 1);
}

TEST_CASE("scheduler answers OVERLOADED with a retry hint once a model's queue is full", "[scheduler]") {
  Fixture f;
  f.config.max_queue = 1;
  f.slots.free_slots = 0;
  REQUIRE(f.Submit(f.MakeJob("m")).ok());
  uint64_t retry = 0;
  auto st = f.Submit(f.MakeJob("m"), 0, &retry);
  CHECK(st.code() == Code::kOverloaded);
  CHECK(st.message().find("model 'm' has 1 jobs queued") != std::string::npos);
  CHECK(retry >= 1);
  CHECK(f.Submit(f.MakeJob("other")).ok());  // the bound is per model
}

TEST_CASE("a job whose deadline passes in the queue is answered TIMEOUT and never runs", "[scheduler]") {
  Fixture f;
  f.slots.free_slots = 0;
  auto job = f.MakeJob("m");
  REQUIRE(f.Submit(job, 20).ok());
  f.io.run_for(std::chrono::milliseconds(100));
  auto answer = f.client.Next();
  CHECK(answer.id == job->request_id);
  CHECK(answer.code == "TIMEOUT");
  CHECK(answer.message.find("in the queue") != std::string::npos);
  CHECK(f.scheduler.queued() == 0);
  f.slots.free_slots = 1;
  f.slots.serving = {"m"};
  f.scheduler.Dispatch();
  CHECK(f.slots.running.empty());
}

TEST_CASE("a timeout too long to add is the longest deadline, not one in the past", "[scheduler]") {
  Fixture f;
  f.slots.free_slots = 0;
  auto job = f.MakeJob("m");
  REQUIRE(f.Submit(job, UINT64_MAX).ok());  // a client's timeout_ms is any uint64
  REQUIRE(job->deadline_at.has_value());
  CHECK(*job->deadline_at - job->accepted == std::chrono::milliseconds(kMaxTimeoutMs));
  f.io.run_for(std::chrono::milliseconds(50));
  CHECK(f.scheduler.queued() == 1);  // still waiting for a slot, not answered TIMEOUT
}

TEST_CASE("a running job past its deadline is answered, and its worker killed after the grace", "[scheduler]") {
  Fixture f;
  f.config.kill_grace_ms = 30;
  f.slots.serving = {"m"};
  auto job = f.MakeJob("m");
  REQUIRE(f.Submit(job, 20).ok());
  f.io.run_for(std::chrono::milliseconds(35));
  CHECK(f.client.Next().code == "TIMEOUT");
  CHECK(f.slots.terminated.empty());  // still within the grace
  f.io.run_for(std::chrono::milliseconds(60));
  REQUIRE(f.slots.terminated.size() == 1);
  CHECK(f.slots.terminated[0].find("still runs timed-out job 1") != std::string::npos);
}

namespace {
// A reply whose outputs are a tuple of float32[4] tensors at (arena, block).
std::string TupleReply(uint64_t job, const std::vector<std::pair<uint64_t, uint64_t>>& tensors) {
  Writer w;
  BeginReply(&w, job, 1);
  w.Key("outputs");
  w.Map(1);
  w.Key("tuple");
  w.pk().pack_array(static_cast<uint32_t>(tensors.size()));
  for (const auto& [arena, block] : tensors) {
    w.Map(1);
    w.Key("tensor");
    Descriptor d;
    d.arena = arena;
    d.block = d.offset = block;
    d.dtype = "float32";
    d.shape = {4};
    d.strides = {1};
    d.Pack(&w);
  }
  return std::string(w.body());
}
}  // namespace

TEST_CASE("a timed-out job's late outputs go back to the worker, never an input's block", "[scheduler]") {
  Fixture f;
  f.slots.serving = {"m"};
  auto in_fd = CreateArenaFd("input", 4096);
  auto input = f.arenas.Register(f.client.session->id, std::make_shared<OwnedFd>(*in_fd));
  REQUIRE(input.ok());
  auto job = f.MakeJob("m");
  REQUIRE(f.Submit(job, 10).ok());
  // The worker made an output arena for this client (its own id has kWorkerArenaBit).
  const uint64_t local = kWorkerArenaBit | 1;
  auto out_fd = CreateArenaFd("output", 4096);
  REQUIRE(f.arenas.RegisterWorkerArena(f.client.session->id, job->worker, job->generation, local,
                                       std::make_shared<OwnedFd>(*out_fd)).ok());
  f.io.run_for(std::chrono::milliseconds(30));
  CHECK(f.client.Next().code == "TIMEOUT");
  // The model returned its input (a client block) and one new tensor (a worker block).
  f.slots.Finish(TupleReply(job->id, {{*input, 64}, {local, 128}}));
  CHECK(f.slots.freed == std::vector<uint64_t>{128});
  CHECK(f.slots.freed_arenas == std::vector<uint64_t>{local});
}

TEST_CASE("an answer names output arenas by the client's ids and brings new ones once", "[scheduler]") {
  Fixture f;
  f.slots.serving = {"m"};
  const uint64_t local = kWorkerArenaBit | 5;
  for (int round = 0; round < 2; ++round) {
    auto job = f.MakeJob("m");
    REQUIRE(f.Submit(job).ok());
    if (round == 0) {
      auto fd = CreateArenaFd("output", 4096);
      REQUIRE(f.arenas.RegisterWorkerArena(f.client.session->id, job->worker, job->generation, local,
                                           std::make_shared<OwnedFd>(*fd)).ok());
    }
    f.slots.Finish(TupleReply(job->id, {{local, 64}}));
    f.io.poll();
    auto answer = f.client.Next();
    CHECK(answer.code.empty());
    CHECK(answer.fds == (round == 0 ? 1u : 0u));  // the fd travels with the first answer only
    const ArenaEntry* a = f.arenas.FindWorkerArena(job->worker, job->generation, local);
    REQUIRE(a != nullptr);
    auto oh = Decode(answer.body);
    const auto& tuple = MapView(oh->get()).Find("outputs")->via.map.ptr[0].val;
    auto d = Descriptor::Parse(tuple.via.array.ptr[0].via.map.ptr[0].val);
    CHECK(d->arena == a->id);  // the client's id, not the worker's
  }
}

TEST_CASE("outputs in an arena of another client are refused and released", "[scheduler]") {
  Fixture f;
  f.slots.serving = {"m"};
  auto job = f.MakeJob("m");
  REQUIRE(f.Submit(job).ok());
  const uint64_t local = kWorkerArenaBit | 9;
  auto fd = CreateArenaFd("output", 4096);
  REQUIRE(f.arenas.RegisterWorkerArena(f.client.session->id + 100, job->worker, job->generation, local,
                                       std::make_shared<OwnedFd>(*fd)).ok());
  f.slots.Finish(TupleReply(job->id, {{local, 64}}));
  f.io.poll();
  CHECK(f.client.Next().code == "INTERNAL");
}

TEST_CASE("a job that crashed its worker is re-run once when asked, then answered", "[scheduler]") {
  Fixture f;
  f.slots.serving = {"m"};
  auto job = f.MakeJob("m", /*retries=*/1);
  REQUIRE(f.Submit(job).ok());
  f.slots.Finish("", Status(Code::kWorkerCrashed, "worker 0 died"));
  REQUIRE(f.slots.running.size() == 1);  // re-run
  CHECK(f.slots.running[0].job == job);
  f.slots.Finish("", Status(Code::kWorkerCrashed, "worker 0 died again"));
  CHECK(f.slots.running.empty());
  f.io.poll();
  auto answer = f.client.Next();
  CHECK(answer.code == "WORKER_CRASHED");
  CHECK(answer.message.find("crashed a worker before too") != std::string::npos);
  CHECK(f.scheduler.jobs_failed() == 1);
}

TEST_CASE("FailQueued answers the queued jobs of one model only", "[scheduler]") {
  Fixture f;
  f.slots.free_slots = 0;
  auto a = f.MakeJob("a"), b = f.MakeJob("b");
  REQUIRE(f.Submit(a).ok());
  REQUIRE(f.Submit(b).ok());
  f.scheduler.FailQueued("a", [](const Job& j) { return Status(Code::kUnavailable, "gone " + std::to_string(j.id)); });
  f.io.poll();
  auto answer = f.client.Next();
  CHECK(answer.id == a->request_id);
  CHECK(answer.message == "gone 1");
  CHECK(f.scheduler.Queued("a") == 0);
  CHECK(f.scheduler.Queued("b") == 1);
}

TEST_CASE("after Stop, queued jobs are answered UNAVAILABLE and new ones refused", "[scheduler]") {
  Fixture f;
  f.slots.free_slots = 0;
  REQUIRE(f.Submit(f.MakeJob("m")).ok());
  f.scheduler.Stop();
  f.io.poll();
  CHECK(f.client.Next().code == "UNAVAILABLE");
  CHECK(f.Submit(f.MakeJob("m")).code() == Code::kUnavailable);
}

TEST_CASE("a client that hangs up loses its queued jobs silently", "[scheduler]") {
  Fixture f;
  f.slots.free_slots = 0;
  auto job = f.MakeJob("m");
  REQUIRE(f.Submit(job).ok());
  f.scheduler.DropClient(f.client.session.get());
  CHECK(job->answered);
  CHECK(f.scheduler.queued() == 0);
}

TEST_CASE("a free slot goes to the client with the fewest jobs of the model running", "[scheduler]") {
  Fixture f;
  f.slots.free_slots = 2;
  f.slots.serving = {"m"};
  auto a1 = f.MakeJob("m", 0, 1), a2 = f.MakeJob("m", 0, 1), a3 = f.MakeJob("m", 0, 1);
  auto b1 = f.MakeJob("m", 0, 2);
  for (const auto& j : {a1, a2, a3, b1}) REQUIRE(f.Submit(j).ok());
  REQUIRE(f.slots.running.size() == 2);  // a1, a2
  f.slots.Finish(ValueReply(a1->id));
  REQUIRE(f.slots.running.size() == 2);
  CHECK(f.slots.running[1].job == b1);  // before a3, which came first
  f.slots.Finish(ValueReply(a2->id));
  CHECK(f.slots.running[1].job == a3);
}

TEST_CASE("a job with GPU inputs runs on its GPU; fairness never swaps in a job of another GPU", "[scheduler]") {
  Fixture f;
  f.slots.free_slots = 4;
  f.slots.serving = {"m"};
  const std::string g1 = "0000:01:00.0", g2 = "0000:02:00.0";  // workers 0 and 1 in the fake
  f.slots.gpu_slots = {{g1, 1}, {g2, 1}};
  auto on = [&](const std::string& gpu, uid_t uid) {
    auto job = f.MakeJob("m", 0, uid);
    job->gpu = gpu;
    return job;
  };
  auto a1 = on(g1, 1), h1 = on("", 1), b1 = on(g2, 3), a2 = on(g1, 1), c = on(g2, 2);
  for (const auto& j : {a1, h1, b1, a2, c}) REQUIRE(f.Submit(j).ok());
  REQUIRE(f.slots.running.size() == 3);  // a2 and c wait for their GPUs, though a slot is free
  CHECK(a1->worker == 0);
  CHECK(b1->worker == 1);
  CHECK(f.scheduler.Queued("m") == 2);
  // GPU 1 frees up. Client 2 (c) has nothing running and client 1 (a2) one job, but c's
  // inputs are on GPU 2: a2 gets GPU 1's slot.
  f.slots.Finish(ValueReply(a1->id));
  REQUIRE(f.slots.running.size() == 3);
  CHECK(f.slots.running.back().job == a2);
  CHECK(a2->worker == 0);
  CHECK(c->worker == -1);
  CHECK(f.scheduler.Queued("m") == 1);
}

TEST_CASE("a full queue makes room for a newcomer by dropping the biggest holder's newest job", "[scheduler]") {
  Fixture f;
  f.config.max_queue = 3;
  f.slots.free_slots = 0;
  auto a1 = f.MakeJob("m", 0, 1), a2 = f.MakeJob("m", 0, 1), a3 = f.MakeJob("m", 0, 1);
  for (const auto& j : {a1, a2, a3}) REQUIRE(f.Submit(j).ok());
  CHECK(f.Submit(f.MakeJob("m", 0, 1)).code() == Code::kOverloaded);  // the holder itself: refused
  auto b1 = f.MakeJob("m", 0, 2);
  REQUIRE(f.Submit(b1).ok());
  f.io.poll();
  auto dropped = f.client.Next();
  CHECK(dropped.id == a3->request_id);
  CHECK(dropped.code == "OVERLOADED");
  CHECK(dropped.message.find("to make room for another client's") != std::string::npos);
  CHECK(f.scheduler.Queued("m") == 3);
  // a holds 2, b holds 1: b's next would make them even, so nothing is dropped for it.
  CHECK(f.Submit(f.MakeJob("m", 0, 2)).code() == Code::kOverloaded);
  CHECK(f.scheduler.Queued("m") == 3);
}

namespace {
// Dynamic batching: jobs of model "b" whose policy batches, with one input each.
std::shared_ptr<const BatchPolicy> Policy(uint32_t max_batch, uint64_t delay_us, std::vector<uint32_t> preferred = {}) {
  auto p = std::make_shared<BatchPolicy>();
  p->max_batch = max_batch;
  p->max_delay_us = delay_us;
  p->preferred_batch_sizes = std::move(preferred);
  return p;
}
Descriptor Input(std::vector<int64_t> shape, const std::string& dtype = "float32") {
  Descriptor d;
  d.dtype = dtype;
  d.shape = std::move(shape);
  d.strides.assign(d.shape.size(), 1);
  return d;
}
std::shared_ptr<Job> BatchJob(Fixture& f, const std::shared_ptr<const BatchPolicy>& p, std::vector<Descriptor> inputs) {
  auto job = f.MakeJob("b");
  job->batching = p;
  job->inputs = std::move(inputs);
  return job;
}
}  // namespace

TEST_CASE("a batch takes the oldest jobs whose inputs agree on all but dim 0, up to max_batch", "[scheduler][batching]") {
  Fixture f;
  f.slots.free_slots = 0;  // every slot busy: the jobs queue
  f.slots.serving = {"b"};
  auto p = Policy(3, 0);
  auto a = BatchJob(f, p, {Input({1, 4})});
  auto other_shape = BatchJob(f, p, {Input({1, 5})});
  auto c = BatchJob(f, p, {Input({2, 4})});
  auto other_dtype = BatchJob(f, p, {Input({1, 4}, "float64")});
  auto e = BatchJob(f, p, {Input({3, 4})});
  auto late = BatchJob(f, p, {Input({1, 4})});
  auto rows_differ = BatchJob(f, p, {Input({1, 4}), Input({2, 4})});  // its own inputs disagree on dim 0
  auto scalar = BatchJob(f, p, {Input({})});
  for (const auto& j : {a, other_shape, c, other_dtype, e, late, rows_differ, scalar}) REQUIRE(f.Submit(j).ok());
  f.slots.free_slots = 20;
  f.scheduler.Dispatch();
  REQUIRE(f.slots.batches.size() == 1);
  CHECK(f.slots.batches[0] == std::vector<uint64_t>{a->id, c->id, e->id});
  // The rest run alone: none agrees with another (`late` is alone in what is left).
  CHECK(f.slots.running.size() == 8);
  CHECK(f.scheduler.queued() == 0);
  CHECK(f.scheduler.Batches("b").batches == 1);
  CHECK(f.scheduler.Batches("b").batched_jobs == 3);
  Exposition out;
  f.metrics.Render(&out);  // one run of 3, five of 1
  CAPTURE(out.text());
  CHECK(out.text().find("shoal_batch_size_bucket{model=\"b\",le=\"1\"} 5\n") != std::string::npos);
  CHECK(out.text().find("shoal_batch_size_bucket{model=\"b\",le=\"4\"} 6\n") != std::string::npos);
  CHECK(out.text().find("shoal_batch_size_sum{model=\"b\"} 8\n") != std::string::npos);
  CHECK(BatchCompatible(*a, *late));
  CHECK_FALSE(BatchCompatible(*a, *other_shape));
  CHECK_FALSE(BatchCompatible(*a, *other_dtype));
  CHECK_FALSE(BatchCompatible(*rows_differ, *rows_differ));
  CHECK_FALSE(BatchCompatible(*scalar, *scalar));
}

TEST_CASE("a batch waits for max_delay_us to fill, then goes with what it has", "[scheduler][batching]") {
  Fixture f;
  f.slots.serving = {"b"};
  auto p = Policy(4, 50'000);
  auto a = BatchJob(f, p, {Input({1, 4})});
  auto b = BatchJob(f, p, {Input({1, 4})});
  REQUIRE(f.Submit(a).ok());
  REQUIRE(f.Submit(b).ok());
  CHECK(f.slots.running.empty());  // held: a free slot, but the batch may still fill
  f.io.run_for(std::chrono::milliseconds(200));
  REQUIRE(f.slots.batches.size() == 1);
  CHECK(f.slots.batches[0] == std::vector<uint64_t>{a->id, b->id});
  // Each member is answered on its own.
  f.slots.Finish(ValueReply(a->id));
  f.slots.Finish(ValueReply(b->id));
  f.io.poll();
  CHECK(f.client.Next().id == a->request_id);
  CHECK(f.client.Next().id == b->request_id);
}

TEST_CASE("a full batch or a preferred size goes at once", "[scheduler][batching]") {
  Fixture f;
  f.slots.free_slots = 20;
  f.slots.serving = {"b"};
  auto p = Policy(8, 10'000'000, {2, 4});
  REQUIRE(f.Submit(BatchJob(f, p, {Input({1, 4})})).ok());
  CHECK(f.slots.running.empty());
  REQUIRE(f.Submit(BatchJob(f, p, {Input({1, 4})})).ok());
  REQUIRE(f.slots.batches.size() == 1);  // 2 is a preferred size
  CHECK(f.slots.batches[0].size() == 2);
  auto full = Policy(2, 10'000'000);
  auto x = BatchJob(f, full, {Input({1, 3})});
  auto y = BatchJob(f, full, {Input({1, 3})});
  REQUIRE(f.Submit(x).ok());
  REQUIRE(f.Submit(y).ok());
  REQUIRE(f.slots.batches.size() == 2);
  CHECK(f.slots.batches[1] == std::vector<uint64_t>{x->id, y->id});
}

TEST_CASE("a job whose deadline would pass while its batch fills is not held", "[scheduler][batching]") {
  Fixture f;
  f.slots.serving = {"b"};
  auto p = Policy(8, 10'000'000);
  auto patient = BatchJob(f, p, {Input({1, 4})});
  REQUIRE(f.Submit(patient).ok());
  CHECK(f.slots.running.empty());
  auto hurried = BatchJob(f, p, {Input({1, 4})});
  REQUIRE(f.Submit(hurried, 1000).ok());  // 1 s: before the 10 s the batch could wait
  REQUIRE(f.slots.batches.size() == 1);
  CHECK(f.slots.batches[0] == std::vector<uint64_t>{patient->id, hurried->id});
}

TEST_CASE("a batch's worker is killed only once every member passed its deadline and grace", "[scheduler][batching]") {
  Fixture f;
  f.config.kill_grace_ms = 30;
  f.slots.serving = {"b"};
  auto p = Policy(2, 0);
  f.slots.free_slots = 0;
  auto soon = BatchJob(f, p, {Input({1, 4})});
  auto later = BatchJob(f, p, {Input({1, 4})});
  REQUIRE(f.Submit(soon, 20).ok());
  REQUIRE(f.Submit(later, 300).ok());
  f.slots.free_slots = 2;
  f.scheduler.Dispatch();
  REQUIRE(f.slots.batches.size() == 1);
  f.io.run_for(std::chrono::milliseconds(150));
  auto first = f.client.Next();
  CHECK(first.id == soon->request_id);
  CHECK(first.code == "TIMEOUT");
  CHECK(f.slots.terminated.empty());  // `later` is still within its time
  f.io.run_for(std::chrono::milliseconds(400));
  CHECK(f.client.Next().code == "TIMEOUT");
  REQUIRE(f.slots.terminated.size() == 1);
  CHECK(f.slots.terminated[0].find("a batch of 2 jobs") != std::string::npos);
}

TEST_CASE("a crash answers every member of its batch", "[scheduler][batching]") {
  Fixture f;
  f.slots.serving = {"b"};
  f.slots.free_slots = 0;
  auto p = Policy(2, 0);
  auto a = BatchJob(f, p, {Input({1, 4})});
  auto b = BatchJob(f, p, {Input({1, 4})});
  REQUIRE(f.Submit(a).ok());
  REQUIRE(f.Submit(b).ok());
  f.slots.free_slots = 2;
  f.scheduler.Dispatch();
  f.slots.free_slots = 0;  // no re-run may start
  f.slots.Finish("", Status(Code::kWorkerCrashed, "worker 0 died"));
  f.slots.Finish("", Status(Code::kWorkerCrashed, "worker 0 died"));
  f.io.poll();
  CHECK(f.client.Next().code == "WORKER_CRASHED");
  CHECK(f.client.Next().code == "WORKER_CRASHED");
}

TEST_CASE("the scheduler counts every answer by model and code, and each job's time queued and running",
          "[scheduler][metrics]") {
  Fixture f;
  f.slots.serving = {"m"};
  auto ok = f.MakeJob("m"), error = f.MakeJob("m"), crash = f.MakeJob("m");
  REQUIRE(f.Submit(ok).ok());
  f.slots.Finish(ValueReply(ok->id));
  REQUIRE(f.Submit(error).ok());
  f.slots.Finish(ErrorReply(error->id, Status(Code::kModelError, "ValueError: bad input")));
  REQUIRE(f.Submit(crash).ok());
  f.slots.Finish("", Status(Code::kWorkerCrashed, "worker 0 died"));
  f.slots.free_slots = 0;
  REQUIRE(f.Submit(f.MakeJob("m"), 20).ok());  // times out in the queue: answered, never ran
  f.io.run_for(std::chrono::milliseconds(100));
  Exposition out;
  f.metrics.Render(&out);
  const std::string& t = out.text();
  CAPTURE(t);
  CHECK(t.find("shoal_requests_total{model=\"m\",code=\"OK\"} 1\n") != std::string::npos);
  CHECK(t.find("shoal_requests_total{model=\"m\",code=\"MODEL_ERROR\"} 1\n") != std::string::npos);
  CHECK(t.find("shoal_requests_total{model=\"m\",code=\"WORKER_CRASHED\"} 1\n") != std::string::npos);
  CHECK(t.find("shoal_requests_total{model=\"m\",code=\"TIMEOUT\"} 1\n") != std::string::npos);
  CHECK(t.find("shoal_queue_duration_seconds_count{model=\"m\"} 3\n") != std::string::npos);  // the three that ran
  CHECK(t.find("shoal_compute_duration_seconds_count{model=\"m\"} 2\n") != std::string::npos);  // a worker answered
}
