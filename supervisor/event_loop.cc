#include "supervisor/event_loop.h"

#include "protocol/spin.h"
#include "supervisor/config.h"

namespace shoal {

void RunSpinning(boost::asio::io_context& io, std::chrono::microseconds budget) {
  if (budget.count() == 0) {
    io.run();
    return;
  }
  using Clock = std::chrono::steady_clock;
  auto last = Clock::now();
  while (!io.stopped()) {
    if (io.poll() > 0) {  // epoll_wait with no timeout, then what is ready
      last = Clock::now();
      continue;
    }
    if (io.stopped()) break;  // no work left
    if (Clock::now() - last < budget) {
      CpuRelax();
      continue;
    }
    io.run_one();  // sleeps until something is ready
    last = Clock::now();
  }
}

SpinChoice StartupSpinBudget(uint64_t spin_us, int cpus, int slots) {
  if (spin_us != kAutoSpin) return {std::chrono::microseconds(spin_us), "spin_us"};
  bool valid = true;
  if (auto from_env = SpinBudgetFromEnvironment(&valid)) return {*from_env, "spin_us auto: SHOAL_SPIN_US", !valid};
  return {cpus >= 2 * slots + 4 ? kAutoSpinBudget : std::chrono::microseconds(0),
          "spin_us auto: " + std::to_string(cpus) + " CPUs for " + std::to_string(slots) + " worker interpreters"};
}

}  // namespace shoal
