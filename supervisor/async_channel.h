// AsyncChannel: a framed, fd-passing Unix stream socket on the supervisor's event loop.
//
// Reads whole frames and hands each, with the fds that arrived with it, to the frame
// handler; queues writes the socket does not take at once. Owns the socket fd.
// Frames sent while a SendBatch is open on the loop thread are written when it closes, in
// as few sendmsg calls as they allow: each read handler runs its frames' handlers inside
// one, so a client's release and next request, which arrive together, reach their worker
// together (one write there, one wake-up of the worker) instead of one after the other.
// Thread-safety: loop thread only. Callbacks run on the loop thread and may call Close().
#pragma once

#include <boost/asio.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "protocol/frame.h"
#include "shoal/status.h"

namespace shoal {

// An fd closed when the last reference goes.
class OwnedFd {
 public:
  explicit OwnedFd(int fd) : fd_(fd) {}
  ~OwnedFd();
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  int get() const { return fd_; }
  int release() {  // the caller owns the fd from now on
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

class AsyncChannel : public std::enable_shared_from_this<AsyncChannel> {
 public:
  // Takes ownership of `fd` and makes it non-blocking.
  AsyncChannel(boost::asio::io_context& io, int fd);
  ~AsyncChannel();
  AsyncChannel(const AsyncChannel&) = delete;
  AsyncChannel& operator=(const AsyncChannel&) = delete;

  // `fds` is the connection's FIFO of received, unclaimed descriptors (they arrive no later
  // than the first byte of the frame they belong to): a handler takes from its front what
  // the message says it carries and leaves the rest.
  using FrameHandler = std::function<void(std::string body, std::vector<int>* fds)>;
  // Called once: on EOF, on an I/O error, or on a framing error (`why` says which),
  // before the socket is closed (a last Send is attempted at once, not queued).
  using CloseHandler = std::function<void(const Status& why)>;
  void Start(FrameHandler on_frame, CloseHandler on_close);
  // A peer that sends part of a frame and then nothing for `timeout` is cut off (its
  // half frame holds memory). Off (zero) by default.
  void set_frame_timeout(std::chrono::milliseconds timeout) { frame_timeout_ = timeout; }

  // Queues one message body (framed here) with `fds` attached; the fds stay open until sent.
  // Written at once, or when the open SendBatch closes.
  void Send(std::string_view body, std::vector<std::shared_ptr<OwnedFd>> fds = {});
  // Stops I/O and closes the socket; the close handler is not called. What is queued gets
  // one more write attempt first (a last reply sent inside a SendBatch is not lost).
  void Close();
  bool closed() const { return closed_; }

 private:
  struct Out {
    std::string data;
    size_t off = 0;
    std::vector<std::shared_ptr<OwnedFd>> fds;
  };
  friend class SendBatch;
  void ReadSome();
  // Reads what has come (up to 16 x 64 KiB) and handles its whole frames inside one
  // SendBatch. False when the channel failed or closed.
  bool ReadFrames();
  // Handles the whole frames read so far, unless replies pile up (then pauses). False
  // when the channel failed or closed.
  bool HandleFrames();
  // One sendmsg of the queue's front; the bytes the socket took (0: it is full).
  Result<size_t> WriteFront();
  void Flush();
  void ArmFrameTimer();
  void Fail(const Status& why);

  boost::asio::posix::stream_descriptor sd_;
  FrameReader reader_;
  std::vector<int> pending_fds_;
  std::deque<Out> out_;
  size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool waiting_read_ = false;  // a wait_read is outstanding
  bool read_paused_ = false;  // replies pile up: reading waits until the peer takes them
  std::chrono::milliseconds frame_timeout_{0};
  std::unique_ptr<boost::asio::steady_timer> frame_timer_;
  bool closed_ = false;
  bool failing_ = false;
  bool batched_ = false;  // has frames held by the open SendBatch
  FrameHandler on_frame_;
  CloseHandler on_close_;
};

// While one is alive, AsyncChannel::Send on this thread queues instead of writing; its
// destructor writes each channel's queue (consecutive frames merge into one write, up to
// 64 KiB and kMaxFdsPerFrame descriptors: what every receiver takes in one recvmsg).
// Nested batches are part of the outermost. Loop thread only; never held across a wait.
class SendBatch {
 public:
  SendBatch();
  ~SendBatch();
  SendBatch(const SendBatch&) = delete;
  SendBatch& operator=(const SendBatch&) = delete;

 private:
  friend class AsyncChannel;
  static void Hold(std::shared_ptr<AsyncChannel> channel);
  bool outermost_;
  std::vector<std::shared_ptr<AsyncChannel>> held_;
};

}  // namespace shoal
