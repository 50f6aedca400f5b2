// One copy of each model's GPU weights per GPU (supervisor/gpu_weights.h).
#include "supervisor/gpu_weights.h"

namespace shoal {

GpuWeights::Next GpuWeights::Begin(const std::string& model, const std::string& bus, std::function<void()> resume) {
  Entry& e = entries_[{bus, model}];
  Next next;
  if (e.uploading) {
    e.waiting.push_back(std::move(resume));
    next.step = Step::kWait;
  } else if (e.memory) {
    next.step = Step::kMap;
    next.memory = e.memory;
    next.bytes = e.bytes;
  } else if (e.uploads > 0) {
    next.step = Step::kPlain;  // its upload found no weights for the GPU
  } else {
    e.uploading = true;
    e.ticket = next.ticket = next_ticket_++;
    next.step = Step::kUpload;
  }
  return next;
}

void GpuWeights::Uploaded(const std::string& model, const std::string& bus, uint64_t ticket,
                          std::shared_ptr<OwnedFd> memory, uint64_t bytes) {
  auto it = entries_.find({bus, model});
  if (it == entries_.end() || !it->second.uploading || it->second.ticket != ticket) return;
  Entry& e = it->second;
  e.uploading = false;
  e.memory = std::move(memory);
  e.bytes = e.memory ? bytes : 0;
  ++e.uploads;
  auto waiting = std::move(e.waiting);
  e.waiting.clear();
  Resume(std::move(waiting));
}

void GpuWeights::Failed(const std::string& model, const std::string& bus, uint64_t ticket) {
  auto it = entries_.find({bus, model});
  if (it == entries_.end() || !it->second.uploading || it->second.ticket != ticket) return;
  it->second.uploading = false;  // no upload yet: the next load (a waiting one) uploads
  auto waiting = std::move(it->second.waiting);
  it->second.waiting.clear();
  Resume(std::move(waiting));
}

void GpuWeights::Forget(const std::string& model) {
  std::vector<std::function<void()>> waiting;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->first.second != model) {
      ++it;
      continue;
    }
    for (auto& w : it->second.waiting) waiting.push_back(std::move(w));
    it = entries_.erase(it);
  }
  Resume(std::move(waiting));
}

void GpuWeights::Resume(std::vector<std::function<void()>> waiting) {
  for (auto& fn : waiting) fn();
}

std::vector<GpuWeights::Held> GpuWeights::List() const {
  std::vector<Held> out;
  for (const auto& [key, e] : entries_) {
    if (e.memory) out.push_back({key.first, key.second, e.bytes, e.uploads});
  }
  return out;
}

}  // namespace shoal
