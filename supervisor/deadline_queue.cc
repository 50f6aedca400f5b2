#include "supervisor/deadline_queue.h"

#include <vector>

#include "supervisor/job.h"

namespace shoal {

DeadlineQueue::DeadlineQueue(boost::asio::io_context& io, FireFn fire) : timer_(io), fire_(std::move(fire)) {}

void DeadlineQueue::Add(const std::shared_ptr<Job>& job, Clock::time_point at) {
  Remove(job.get());  // a new deadline replaces one still to come or due in this round
  job->deadline_at = at;
  job->deadline_entry = entries_.emplace(at, job);
  job->in_deadlines = true;
  if (at < armed_) ArmFor(at);
}

void DeadlineQueue::Remove(Job* job) {
  job->deadline_due = false;  // due in the round being fired: not any more
  if (!job->in_deadlines) return;
  entries_.erase(job->deadline_entry);
  job->in_deadlines = false;
}

void DeadlineQueue::ArmFor(Clock::time_point at) {
  armed_ = at;
  ++timer_sets_;
  timer_.expires_at(at);  // a wait set for later ends with operation_aborted
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) OnTimer();
  });
}

void DeadlineQueue::OnTimer() {
  armed_ = Clock::time_point::max();
  const auto now = Clock::now();
  std::vector<std::shared_ptr<Job>> due;
  for (auto it = entries_.begin(); it != entries_.end() && it->first <= now;) {
    if (auto job = it->second.lock()) {
      job->in_deadlines = false;
      job->deadline_due = true;
      due.push_back(std::move(job));
    }
    it = entries_.erase(it);  // a job gone without Remove leaves its entry until here
  }
  if (!entries_.empty()) ArmFor(entries_.begin()->first);
  for (const auto& job : due) {
    if (!job->deadline_due) continue;  // removed by an earlier fire of this round
    job->deadline_due = false;
    fire_(job);
  }
}

}  // namespace shoal
