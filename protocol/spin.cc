#include "protocol/spin.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace shoal {

std::optional<std::chrono::microseconds> SpinBudgetFromEnvironment(bool* valid) {
  if (valid != nullptr) *valid = true;
  const char* v = std::getenv("SHOAL_SPIN_US");
  if (v == nullptr || *v == '\0') return std::nullopt;
  char* end = nullptr;
  long us = std::strtol(v, &end, 10);
  if (*end != '\0' || us < 0 || us > kMaxSpinUs) {
    if (valid != nullptr) *valid = false;
    return std::chrono::microseconds(0);
  }
  return std::chrono::microseconds(us);
}

namespace {
// Microseconds; -1 until first read from the environment.
std::atomic<int64_t> g_budget_us{-1};
}  // namespace

std::chrono::microseconds SpinBudget() {
  int64_t us = g_budget_us.load(std::memory_order_relaxed);
  if (us < 0) {
    us = SpinBudgetFromEnvironment().value_or(std::chrono::microseconds(0)).count();
    g_budget_us.store(us, std::memory_order_relaxed);
  }
  return std::chrono::microseconds(us);
}

void SetSpinBudget(std::chrono::microseconds budget) {
  setenv("SHOAL_SPIN_US", std::to_string(budget.count()).c_str(), 1);
  g_budget_us.store(budget.count(), std::memory_order_relaxed);
}

}  // namespace shoal
