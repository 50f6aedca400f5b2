// The deadlines of jobs on one timer (supervisor/deadline_queue.h): each due job fires
// once, in deadline order; answered ones never; and the timer is set once for a stream of
// jobs answered in time, not once a job (what re-armed the loop's timerfd every job).
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <thread>
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
  CHECK(q.timer_sets() == 2);  // set for a, moved for b; c and d come after b
  CHECK(a->deadline_at == now + 40ms);
  io.run_for(5s);  // returns once nothing is left to wait for
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
  CHECK(fired == 0);
}

TEST_CASE("the timer, firing with nothing due, is set for the next deadline") {
  boost::asio::io_context io;
  std::vector<uint64_t> fired;
  DeadlineQueue q(io, [&](const std::shared_ptr<Job>& j) { fired.push_back(j->id); });
  auto answered = NewJob(1), later = NewJob(2);
  q.Add(answered, DeadlineQueue::Clock::now() + 10ms);
  q.Remove(answered.get());
  q.Add(later, DeadlineQueue::Clock::now() + 40ms);  // after the time the timer is set for
  CHECK(q.timer_sets() == 1);
  io.run_for(5s);
  CHECK(fired == std::vector<uint64_t>{2});
  CHECK(q.timer_sets() == 2);  // at 10 ms nothing was due: set again for 40 ms
}

TEST_CASE("a job removed by an earlier fire of the same round does not fire") {
  boost::asio::io_context io;
  std::vector<uint64_t> fired;
  auto first = NewJob(1), second = NewJob(2);
  DeadlineQueue* queue = nullptr;
  DeadlineQueue q(io, [&](const std::shared_ptr<Job>& j) {
    fired.push_back(j->id);
    if (j->id == 1) queue->Remove(second.get());  // as answering a batch's members does
  });
  queue = &q;
  auto at = DeadlineQueue::Clock::now() + 5ms;
  q.Add(first, at);
  q.Add(second, at);
  std::this_thread::sleep_for(10ms);  // both due when the timer's handler runs
  io.run_for(5s);
  CHECK(fired == std::vector<uint64_t>{1});
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
  io.run_for(5s);  // returns once nothing is left to wait for
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
  io.run_for(5s);
  CHECK(fired == std::vector<uint64_t>{3});
}
