// Busy-polling before blocking: a process that expects its next message within a few
// microseconds (a job's reply, the next request of a busy client) can read it without
// sleeping and being woken, which costs several microseconds per hop on an idle core.
// SHOAL_SPIN_US (environment, read at first use; shoald's `spin_us` option sets it for
// itself, its zygote and workers) bounds the polling after which every receiver blocks as
// before; 0 or unset: no polling. Each wait spins at most that long and never past the
// wait's deadline, so an idle process burns about one budget per wake-up (a message, or a
// client's periodic deadline check). Worth it only with spare cores.
// Thread-safety: SpinBudget() may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

namespace shoal {

// The largest budget, in microseconds (SHOAL_SPIN_US and shoald's spin_us).
constexpr int64_t kMaxSpinUs = 10000;

// The budget, from SHOAL_SPIN_US (0..kMaxSpinUs; other values: 0).
std::chrono::microseconds SpinBudget();

// SHOAL_SPIN_US as the environment has it now, parsed as SpinBudget does; nullopt where it
// is unset or empty (shoald's spin_us = auto defers to it). *valid (if given): false when it
// is set to something other than a number of microseconds in 0..kMaxSpinUs (read as 0).
std::optional<std::chrono::microseconds> SpinBudgetFromEnvironment(bool* valid = nullptr);

// Sets the budget for this process and SHOAL_SPIN_US for the children it starts later
// (setenv: call it while no other thread reads the environment).
void SetSpinBudget(std::chrono::microseconds budget);

// A pause instruction for busy-wait loops (less power, room for the sibling hyperthread).
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace shoal
