// shoald's loop: runs the io_context's handlers on the calling thread until it stops.
// With a spin budget (protocol/spin.h) it polls for ready handlers that long after the last
// one ran before it sleeps in epoll_wait, so a reply that follows its request within the
// budget is handled without a wake-up; with none it is io_context::run().
// Thread-safety: call from the one thread that runs shoald's handlers.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>

namespace shoal {

void RunSpinning(boost::asio::io_context& io, std::chrono::microseconds budget);

}  // namespace shoal
