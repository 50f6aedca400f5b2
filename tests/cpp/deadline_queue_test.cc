// The deadlines of jobs on one timer (supervisor/deadline_queue.h): each due job fires
// once, in deadline order; answered ones never; and the timer is set once for a stream of
// jobs answered in time, not once a job (what re-armed the loop's timerfd every job).
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <vector>

#include "supervisor/deadline_queue.h"
#include "supervisor/job.h"
#include "tests/cpp/catch.h"

using namespace shoal;
using namespace std::chrono_literals;

namespace {

std::shared_ptr<Job> NewJob(uint64_t id) {
  auto job = std::make_shared<Job>();
  job->id = id;
  return job;
}

}  // namespace

TEST_CASE("due jobs fire once, in deadline order; removed ones never") {
  boost::asio::io_context io;
  std::vector<uint64_t> fired;
  DeadlineQueue q(io, [&](const std::shared_ptr<Job>& j) { fired.push_back(j->id); });
  auto now = DeadlineQueue::Clock::now();
  auto a = NewJob(1), b = NewJob(2), c = NewJob(3), d = NewJob(4);
  q.Add(a, now + 40ms);
  q.Add(b, now + 10ms);  // earlier than the timer is set for: it is moved
  q.Add(c, now + 20ms);
  q.Add(d, now + 30ms);
  q.Remove(c.get());  // answered in time
  CHECK(q.size() == 3);
  CHECK(a->deadline_at == now + 40ms);
  io.run_for(200ms);
  CHECK(fired == std::vector<uint64_t>{2, 4, 1});
  CHECK(q.size() == 0);
  CHECK_FALSE(a->in_deadlines);
  q.Remove(a.get());  // after it fired: nothing to do
}

TEST_CASE("a stream of jobs answered in time sets the timer once") {
  boost::asio::io_context io;
  int fired = 0;
  DeadlineQueue q(io, [&](const std::shared_ptr<Job>&) { ++fired; });
  for (uint64_t i = 0; i < 1000; ++i) {
    auto job = NewJob(i);
    q.Add(job, DeadlineQueue::Clock::now() + 60s);  // each later than the one before
    io.poll();
    q.Remove(job.get());
  }
  CHECK(q.timer_sets() == 1);
  CHECK(q.size() == 0);
  // The timer, when it fires with nothing due, is set for the next deadline, once.
  auto late = NewJob(7);
  q.Add(late, DeadlineQueue::Clock::now() + 80s);
  CHECK(q.timer_sets() == 1);
  CHECK(fired == 0);
}

TEST_CASE("a job gone without Remove does not fire, and a fire may add another") {
  boost::asio::io_context io;
  std::vector<uint64_t> fired;
  std::shared_ptr<Job> again = NewJob(9);
  DeadlineQueue* queue = nullptr;
  DeadlineQueue q(io, [&](const std::shared_ptr<Job>& j) {
    fired.push_back(j->id);
    if (j->id == 1) queue->Add(again, DeadlineQueue::Clock::now() + 5ms);  // as the kill grace re-arms
  });
  queue = &q;
  auto now = DeadlineQueue::Clock::now();
  auto gone = NewJob(5);
  auto first = NewJob(1);
  q.Add(gone, now + 5ms);
  q.Add(first, now + 10ms);
  gone.reset();  // dropped while waiting (its entry holds it weakly)
  io.run_for(200ms);
  CHECK(fired == std::vector<uint64_t>{1, 9});
  CHECK(q.size() == 0);
}

TEST_CASE("adding a job again replaces its entry") {
  boost::asio::io_context io;
  std::vector<uint64_t> fired;
  DeadlineQueue q(io, [&](const std::shared_ptr<Job>& j) { fired.push_back(j->id); });
  auto job = NewJob(3);
  q.Add(job, DeadlineQueue::Clock::now() + 5ms);
  q.Add(job, DeadlineQueue::Clock::now() + 15ms);
  CHECK(q.size() == 1);
  io.run_for(100ms);
  CHECK(fired == std::vector<uint64_t>{3});
}
