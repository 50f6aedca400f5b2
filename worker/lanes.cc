#include "worker/lanes.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "protocol/reply_bundle.h"

namespace shoal {

void ReplySink::Send(const std::string& body, const std::vector<int>& fds) {
  if (body.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (!SendAll(fd_, EncodeFrame(body), fds).ok()) _exit(0);  // shoald is gone
}

void ReplySink::SendBatch(const EncodedReply& bundle) {
  auto parts = SplitReplyBundle(bundle);
  if (!parts.ok()) {
    spdlog::error("{}", parts.status().ToString());
    return Send(bundle);
  }
  for (const auto& w : JoinFrames(*parts)) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!SendAll(fd_, w.body, w.fds).ok()) _exit(0);  // shoald is gone
  }
}

void Gather::Add(const EncodedReply& r, ReplySink* sink) {
  std::lock_guard<std::mutex> lock(mu_);
  bool error = false;
  if (auto oh = Decode(r.body); oh.ok()) {
    auto ok = MapView(oh->get()).Bool("ok");
    error = ok.ok() && !*ok;
  }
  if (reply_.body.empty() || (error && !failed_)) {
    reply_ = r;
    failed_ = failed_ || error;
  }
  if (--remaining_ == 0) sink->Send(reply_);
}

void Lane::Push(Task t) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(t));
    ++load_;
  }
  cv_.notify_one();
}

void Lane::Loop() {
  interp_->AttachThread();
  if (auto st = interp_->CreateRunner(slot_); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    _exit(3);
  }
  for (;;) {
    Task t;
    interp_->ReleaseGil();
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !queue_.empty(); });
      t = std::move(queue_.front());
      queue_.pop_front();
    }
    if (auto late = t.deadline.ReplyIfPassed(slot_); !late.empty()) {
      --load_;
      sink_->Send(late);
      continue;
    }
    EncodedReply reply;
    if (t.torchscript) {
      std::vector<int> none;  // a TorchScript job carries no fd
      if (auto oh = Decode(t.body); oh.ok()) ts_->Handle(MapView(oh->get()), &none, &reply);
    } else {
      interp_->AcquireGil();
      auto r = interp_->Handle(t.body, &t.fds);
      if (!r.ok()) {
        spdlog::critical("{}", r.status().ToString());
        _exit(4);
      }
      reply = std::move(*r);
      CloseAll(&t.fds);  // none, unless the runner left one unclaimed
    }
    --load_;
    if (t.gather) {
      t.gather->Add(reply, sink_);
    } else if (t.batch) {
      sink_->SendBatch(reply);
    } else {
      sink_->Send(reply);
    }
  }
}

}  // namespace shoal
