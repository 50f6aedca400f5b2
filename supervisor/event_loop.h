// shoald's loop: runs the io_context's handlers on the calling thread until it stops.
// With a spin budget (protocol/spin.h) it polls for ready handlers that long after the last
// one ran before it sleeps in epoll_wait, so a reply that follows its request within the
// budget is handled without a wake-up; with none it is io_context::run().
// Thread-safety: call from the one thread that runs shoald's handlers.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <string>

namespace shoal {

void RunSpinning(boost::asio::io_context& io, std::chrono::microseconds budget);

// What spin_us = auto polls where the machine has CPUs to spare.
constexpr std::chrono::microseconds kAutoSpinBudget{50};

// The budget shoald, its zygote and its workers run with (spin_us, supervisor/config.h): a
// number as given (0: none); auto (kAutoSpin): SHOAL_SPIN_US where the environment sets it,
// else kAutoSpinBudget where shoald may use two CPUs per worker interpreter (`slots`) and
// four more for itself, its clients and the rest, else none: on fewer CPUs a poller takes
// the CPU its sender needs (bench/README.md, "Polling before sleeping").
struct SpinChoice {
  std::chrono::microseconds budget{0};
  std::string why;                 // for the log: "spin_us auto: 16 CPUs for 1 worker interpreters"
  bool bad_environment = false;    // auto met a SHOAL_SPIN_US that is no budget (read as 0)
};
SpinChoice StartupSpinBudget(uint64_t spin_us, int cpus, int slots);

}  // namespace shoal
