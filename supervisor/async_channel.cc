#include "supervisor/async_channel.h"

#include <fcntl.h>
#include <unistd.h>

#include "protocol/channel.h"

namespace shoal {

namespace asio = boost::asio;
constexpr size_t kMaxQueuedBytes = 64u << 20;  // a peer that stops reading is cut off
constexpr size_t kMaxPendingFds = 64;

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
  if (closed_) return;
  auto self = shared_from_this();
  sd_.async_wait(asio::posix::descriptor_base::wait_read, [self](const boost::system::error_code& ec) {
    if (self->closed_ || ec == asio::error::operation_aborted) return;
    if (ec) return self->Fail(Status(Code::kIoError, "wait_read: " + ec.message()));
    uint8_t buf[64 * 1024];
    for (int round = 0; round < 16 && !self->closed_; ++round) {
      auto n = RecvSome(self->sd_.native_handle(), buf, sizeof(buf), &self->pending_fds_);
      if (!n.ok()) {
        if (n.status().code() == Code::kUnavailable) break;  // would block
        return self->Fail(n.status());
      }
      if (*n == 0) return self->Fail(Status(Code::kUnavailable, "peer closed the connection"));
      if (self->pending_fds_.size() > kMaxPendingFds) {
        return self->Fail(Status::BadRequest("too many file descriptors sent without a message"));
      }
      self->reader_.Append(buf, *n);
      for (;;) {
        auto frame = self->reader_.Next();
        if (!frame.ok()) return self->Fail(frame.status());
        if (!frame->has_value()) break;
        self->on_frame_(std::move(**frame), &self->pending_fds_);
        if (self->closed_) return;
      }
      if (*n < sizeof(buf)) break;
    }
    self->ReadSome();
  });
}

void AsyncChannel::Send(std::string_view body, std::vector<std::shared_ptr<OwnedFd>> fds) {
  if (closed_) return;
  if (queued_bytes_ > kMaxQueuedBytes) {
    return Fail(Status(Code::kUnavailable, "peer is not reading its replies"));
  }
  Out o;
  o.data = EncodeFrame(body);
  o.fds = std::move(fds);
  queued_bytes_ += o.data.size();
  out_.push_back(std::move(o));
  if (!writing_) Flush();
}

void AsyncChannel::Flush() {
  while (!out_.empty() && !closed_) {
    Out& o = out_.front();
    std::vector<int> fds;
    if (o.off == 0) {
      for (const auto& f : o.fds) fds.push_back(f->get());
    }
    auto n = SendSome(sd_.native_handle(), std::string_view(o.data).substr(o.off), fds);
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
    o.off += *n;
    queued_bytes_ -= *n;
    if (o.off == o.data.size()) out_.pop_front();
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
  closed_ = true;
  boost::system::error_code ignored;
  sd_.cancel(ignored);
  sd_.close(ignored);
  out_.clear();
  CloseAll(&pending_fds_);
}

}  // namespace shoal
