#include "supervisor/async_channel.h"

#include <fcntl.h>
#include <unistd.h>

#include "protocol/channel.h"

namespace shoal {

namespace {
thread_local SendBatch* open_batch = nullptr;  // the outermost SendBatch alive on this thread
}  // namespace

namespace asio = boost::asio;
// A peer that does not read its replies: past kPauseReadingBytes of unsent replies its
// requests are no longer read (the kernel's buffers then block its writes); replies to
// what was already read can still push the queue to kMaxQueuedBytes, then it is cut off.
constexpr size_t kPauseReadingBytes = 1u << 20;
constexpr size_t kMaxQueuedBytes = 16u << 20;
constexpr size_t kMaxPendingFds = 64;
constexpr size_t kMergeBytes = 64u << 10;  // consecutive frames written as one, up to this

OwnedFd::~OwnedFd() {
  if (fd_ >= 0) close(fd_);
}

AsyncChannel::AsyncChannel(asio::io_context& io, int fd) : sd_(io, fd) {
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

AsyncChannel::~AsyncChannel() {
  CloseAll(&pending_fds_);
}

void AsyncChannel::Start(FrameHandler on_frame, CloseHandler on_close) {
  on_frame_ = std::move(on_frame);
  on_close_ = std::move(on_close);
  ReadSome();
}

void AsyncChannel::ReadSome() {
  // One wait at a time: a batch's writes may resume a paused channel's reading (Flush)
  // inside the read handler that is about to wait again.
  if (closed_ || waiting_read_) return;
  waiting_read_ = true;
  auto self = shared_from_this();
  sd_.async_wait(asio::posix::descriptor_base::wait_read, [self](const boost::system::error_code& ec) {
    self->waiting_read_ = false;
    if (self->closed_ || ec == asio::error::operation_aborted) return;
    if (ec) return self->Fail(Status(Code::kIoError, "wait_read: " + ec.message()));
    if (!self->ReadFrames()) return;
    self->ArmFrameTimer();
    if (!self->read_paused_) self->ReadSome();
  });
}

bool AsyncChannel::ReadFrames() {
  // What the frames' handlers send goes out when they are all handled, before this channel
  // waits again (the re-arm is a system call: replies do not wait behind it).
  SendBatch batch;
  uint8_t buf[64 * 1024];
  for (int round = 0; round < 16 && !closed_ && !read_paused_; ++round) {
    auto n = RecvSome(sd_.native_handle(), buf, sizeof(buf), &pending_fds_);
    if (!n.ok()) {
      if (n.status().code() == Code::kUnavailable) break;  // would block
      Fail(n.status());
      return false;
    }
    if (*n == 0) {
      Fail(Status(Code::kUnavailable, "peer closed the connection"));
      return false;
    }
    if (pending_fds_.size() > kMaxPendingFds) {
      Fail(Status::BadRequest("too many file descriptors sent without a message"));
      return false;
    }
    reader_.Append(buf, *n);
    if (!HandleFrames()) return false;
    if (*n < sizeof(buf)) break;
  }
  return true;
}

bool AsyncChannel::HandleFrames() {
  auto self = shared_from_this();  // a handler may drop the last other reference
  while (!closed_) {
    if (queued_bytes_ > kPauseReadingBytes) {
      // The peer does not take its replies: stop handling (and reading) its requests until
      // it does; Flush resumes. What it sent meanwhile waits in the reader or the kernel.
      read_paused_ = true;
      return true;
    }
    auto frame = reader_.Next();
    if (!frame.ok()) {
      Fail(frame.status());
      return false;
    }
    if (!frame->has_value()) return true;
    on_frame_(std::move(**frame), &pending_fds_);
  }
  return false;
}

void AsyncChannel::ArmFrameTimer() {
  if (frame_timeout_.count() == 0 || closed_) return;
  if (reader_.buffered() == 0) {
    if (frame_timer_) frame_timer_->cancel();
    return;
  }
  // Re-armed after every read that leaves a partial frame: the peer must make progress.
  if (!frame_timer_) frame_timer_ = std::make_unique<asio::steady_timer>(sd_.get_executor());
  frame_timer_->expires_after(frame_timeout_);
  auto self = shared_from_this();
  frame_timer_->async_wait([self](const boost::system::error_code& ec) {
    // Paused (replies pile up) or nothing partial left: the peer is not the one stalling.
    if (ec || self->closed_ || self->read_paused_ || self->reader_.buffered() == 0) return;
    self->Fail(Status::BadRequest("sent " + std::to_string(self->reader_.buffered()) + " bytes of a frame, then nothing for " +
                                  std::to_string(self->frame_timeout_.count()) + " ms; the connection is closed"));
  });
}

void AsyncChannel::Send(std::string_view body, std::vector<std::shared_ptr<OwnedFd>> fds) {
  if (closed_) return;
  if (queued_bytes_ > kMaxQueuedBytes) {
    return Fail(Status(Code::kUnavailable, "peer is not reading its replies"));
  }
  size_t bytes = kFrameHeaderSize + body.size();
  queued_bytes_ += bytes;
  Out* tail = out_.empty() ? nullptr : &out_.back();
  if (tail != nullptr && tail->off == 0 && tail->data.size() + bytes <= kMergeBytes &&
      tail->fds.size() + fds.size() <= kMaxFdsPerFrame) {
    // Not started yet: this frame goes in the same write (its fds ride on that write's
    // first byte, which is no later than this frame's: receivers take them in order).
    AppendFrame(&tail->data, body);
    for (auto& f : fds) tail->fds.push_back(std::move(f));
  } else {
    Out o;
    AppendFrame(&o.data, body);
    o.fds = std::move(fds);
    out_.push_back(std::move(o));
  }
  if (open_batch != nullptr && !failing_) {
    if (!batched_) {
      batched_ = true;
      SendBatch::Hold(shared_from_this());
    }
    return;
  }
  if (!writing_) Flush();
}

Result<size_t> AsyncChannel::WriteFront() {
  Out& o = out_.front();
  std::vector<int> fds;
  if (o.off == 0) {
    for (const auto& f : o.fds) fds.push_back(f->get());
  }
  auto n = SendSome(sd_.native_handle(), std::string_view(o.data).substr(o.off), fds);
  if (!n.ok() || *n == 0) return n;
  o.off += *n;
  queued_bytes_ -= *n;
  if (o.off == o.data.size()) out_.pop_front();
  return n;
}

void AsyncChannel::Flush() {
  while (!out_.empty() && !closed_) {
    auto n = WriteFront();
    if (!n.ok()) return Fail(n.status());
    if (*n == 0) {
      writing_ = true;
      auto self = shared_from_this();
      sd_.async_wait(asio::posix::descriptor_base::wait_write, [self](const boost::system::error_code& ec) {
        self->writing_ = false;
        if (self->closed_ || ec == asio::error::operation_aborted) return;
        if (ec) return self->Fail(Status(Code::kIoError, "wait_write: " + ec.message()));
        self->Flush();
      });
      return;
    }
  }
  if (read_paused_ && queued_bytes_ <= kPauseReadingBytes / 2 && !closed_) {
    read_paused_ = false;
    if (HandleFrames() && !read_paused_) {  // what was read before the pause first
      ArmFrameTimer();
      ReadSome();
    }
  }
}

void AsyncChannel::Fail(const Status& why) {
  if (closed_ || failing_) return;
  // The handler runs while the socket is still open, so it can send a last error reply
  // (best effort: whatever the socket takes now), then the channel closes.
  failing_ = true;
  auto handler = std::move(on_close_);
  if (handler) handler(why);
  Close();
}

void AsyncChannel::Close() {
  if (closed_) return;
  // One more attempt at what is queued (frames an open SendBatch holds have had none);
  // whatever the socket does not take now is dropped with the connection.
  while (!out_.empty() && !writing_) {
    auto n = WriteFront();
    if (!n.ok() || *n == 0) break;
  }
  closed_ = true;
  boost::system::error_code ignored;
  sd_.cancel(ignored);
  sd_.close(ignored);
  if (frame_timer_) frame_timer_->cancel();
  out_.clear();
  CloseAll(&pending_fds_);
}

SendBatch::SendBatch() : outermost_(open_batch == nullptr) {
  if (outermost_) open_batch = this;
}

SendBatch::~SendBatch() {
  if (!outermost_) return;
  open_batch = nullptr;  // what the writes below set off (a failure's last reply) goes at once
  for (auto& channel : held_) {
    channel->batched_ = false;
    if (!channel->closed_ && !channel->writing_) channel->Flush();
  }
}

void SendBatch::Hold(std::shared_ptr<AsyncChannel> channel) { open_batch->held_.push_back(std::move(channel)); }

}  // namespace shoal
