// Blocking and non-blocking I/O of frames over Unix stream sockets, with file
// descriptors passed as SCM_RIGHTS on the first byte of a frame.
// Thread-safety: functions are reentrant; one writer per socket at a time.
#pragma once

#include <cstddef>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/status.h"

namespace shoal {

constexpr size_t kMaxFdsPerFrame = 8;

// Sends `data` (usually EncodeFrame's output) with `fds` attached to its first byte.
// Blocks until all is written (waiting for room on a non-blocking socket). Does not
// close `fds`.
Status SendAll(int sock, std::string_view data, const std::vector<int>& fds = {});

// Sends as much of `data` as the socket takes now (non-blocking socket); `fds` go with the
// first byte and only when at least one byte is sent. Returns bytes sent (0 if it would block).
Result<size_t> SendSome(int sock, std::string_view data, const std::vector<int>& fds);

// One recvmsg: appends received fds (close-on-exec) to *fds. Returns bytes read, 0 on EOF;
// a non-blocking socket (or `flags` MSG_DONTWAIT) with nothing to read gives Code::kUnavailable.
Result<size_t> RecvSome(int sock, uint8_t* buf, size_t cap, std::vector<int>* fds, int flags = 0);

// Blocking: reads until one full frame is available. Returns the body; fds received so far
// are appended to *fds. EOF gives Code::kUnavailable; with a `deadline`, Code::kTimeout
// when it passes first (a frame half-read stays in *reader for the next call). A deadline
// already past reads only what has arrived: no frame there gives Code::kTimeout at once.
class FrameReader;
Result<std::string> RecvFrame(int sock, FrameReader* reader, std::vector<int>* fds,
                              std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt);

// RecvFrame for a caller that must act on signals while it waits (the Python client, whose
// Ctrl-C handler runs only once the wait returns). It returns an empty body with
// *interrupted set when a signal interrupts the wait, and, with `spin`, also once polling
// (SpinBudget) ended without a frame, since a signal that comes while it polls interrupts
// nothing; the caller handles what signals came and calls again with `spin` false. Bytes
// read so far stay in *reader.
Result<std::string> RecvFrameUntilSignal(int sock, FrameReader* reader, std::vector<int>* fds,
                                         std::optional<std::chrono::steady_clock::time_point> deadline, bool spin,
                                         bool* interrupted);

void CloseAll(std::vector<int>* fds);

}  // namespace shoal
