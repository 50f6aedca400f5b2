// DeadlineQueue: the deadlines of accepted jobs, on one timer.
//
// A timer of its own per job re-armed the loop's timerfd for every job (Asio moves the
// timerfd whenever a new timer is the earliest, which a job alone in flight always is):
// one timerfd_settime a job beside the socket calls. Here the one timer is moved only when
// a job's deadline comes before the time it is set for; a job answered in time just leaves
// the queue, and the timer, when it fires with nothing due, is set for the next deadline.
// With every job given the same timeout, that is one timer call per timeout period, not
// one a job.
//
// Owns the entries (deadline, weak job) and the timer; `fire(job)` runs on the loop for
// each job whose deadline has passed and that was not removed, also by an earlier fire of
// the same round (after it left the queue, so it may add or remove others). A job is in at
// most one queue, and only the queue writes its deadline_at, deadline_entry, in_deadlines
// and deadline_due (supervisor/job.h). Remove never moves the timer: after the last job is
// answered a wait stays set until the deadline it was set for (shoald stops its loop with
// io_context::stop, not by running out of work). The io_context outlives the queue.
// Thread-safety: loop thread only.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>

namespace shoal {

struct Job;

class DeadlineQueue {
 public:
  using Clock = std::chrono::steady_clock;
  using Entries = std::multimap<Clock::time_point, std::weak_ptr<Job>>;
  using FireFn = std::function<void(const std::shared_ptr<Job>& job)>;

  DeadlineQueue(boost::asio::io_context& io, FireFn fire);
  DeadlineQueue(const DeadlineQueue&) = delete;
  DeadlineQueue& operator=(const DeadlineQueue&) = delete;

  // Watches `job` until Remove or `at` (stored in job->deadline_at); replaces an entry it had.
  void Add(const std::shared_ptr<Job>& job, Clock::time_point at);
  // Forgets `job`'s entry, if it has one (answered, dropped). Its deadline_at stays.
  void Remove(Job* job);
  size_t size() const { return entries_.size(); }
  // How many times the timer was set (tests: one a timeout period, not one a job).
  uint64_t timer_sets() const { return timer_sets_; }

 private:
  void ArmFor(Clock::time_point at);
  void OnTimer();

  boost::asio::steady_timer timer_;
  Clock::time_point armed_ = Clock::time_point::max();  // when timer_ fires; max(): not set
  Entries entries_;
  FireFn fire_;
  uint64_t timer_sets_ = 0;
};

}  // namespace shoal
