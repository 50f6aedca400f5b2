// memfd helpers: the file behind every arena.
//
// An arena file is an anonymous memfd, sized once and sealed against shrinking and
// growing, so that a peer that maps it can never be made to fault (SIGBUS) by the owner
// truncating it. The supervisor only inspects arena fds (CheckArenaFd); it never maps
// them. Thread-safe: plain system calls.
#pragma once

#include <cstddef>
#include <string>

#include "shoal/status.h"

namespace shoal {

// Creates a sealed memfd of `size` bytes. Returns the fd (close-on-exec).
Result<int> CreateArenaFd(const std::string& name, size_t size);

// Checks that `fd` is a memfd sealed against shrinking and returns its size.
Result<size_t> CheckArenaFd(int fd);

}  // namespace shoal
