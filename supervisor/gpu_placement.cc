#include "supervisor/gpu_placement.h"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <sstream>

#include "base/subprocess.h"

namespace shoal {

namespace {
std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}
}  // namespace

Status GpuPlacement::Discover(const std::string& worker_binary, const std::string& setting) {
  if (setting == "none") return Apply({}, setting);
  auto out = RunProcess({worker_binary, "--list-gpus"}, 60);
  std::vector<std::string> buses;
  if (out.ok() && out->succeeded()) {
    buses = Split(out->out, '\n');
  } else {
    spdlog::warn("cannot list GPUs with {} --list-gpus: {}; workers run without GPUs", worker_binary,
                 out.ok() ? out->Describe() + ": " + out->err : out.status().ToString());
  }
  return Apply(buses, setting);
}

Status GpuPlacement::Apply(const std::vector<std::string>& buses, const std::string& setting) {
  gpus_.clear();
  hidden_ = setting == "none";
  if (hidden_) return Status::Ok();
  // A worker's CUDA_VISIBLE_DEVICES names its GPU the way shoald's own environment does.
  std::vector<std::string> visible;
  if (const char* v = getenv("CUDA_VISIBLE_DEVICES")) visible = Split(v, ',');
  std::vector<Gpu> all;
  for (size_t i = 0; i < buses.size(); ++i) {
    all.push_back({buses[i], i < visible.size() ? visible[i] : std::to_string(i)});
  }
  if (setting.empty() || setting == "all") {
    gpus_ = all;
  } else {
    for (const auto& item : Split(setting, ',')) {
      char* end = nullptr;
      long i = strtol(item.c_str(), &end, 10);
      if (end == item.c_str() || *end != '\0' || i < 0) {
        return Status::BadRequest("gpus = '" + setting + "': give all, none, or GPU indices such as 0,1");
      }
      if (static_cast<size_t>(i) >= all.size()) {
        return Status::BadRequest("gpus = '" + setting + "': GPU " + item + " does not exist; this host has " +
                                  std::to_string(all.size()) + " GPU(s) visible to shoald");
      }
      gpus_.push_back(all[static_cast<size_t>(i)]);
    }
  }
  for (size_t i = 0; i < gpus_.size(); ++i) spdlog::info("GPU {}: {} (CUDA_VISIBLE_DEVICES={})", i, gpus_[i].bus, gpus_[i].visible);
  return Status::Ok();
}

int GpuPlacement::GpuOf(int slot) const {
  if (gpus_.empty() || slot < 0) return -1;
  return slot % static_cast<int>(gpus_.size());
}

std::string GpuPlacement::BusOf(int slot) const {
  int g = GpuOf(slot);
  return g < 0 ? std::string() : gpus_[static_cast<size_t>(g)].bus;
}

std::optional<std::string> GpuPlacement::CudaVisible(int slot) const {
  if (hidden_) return std::string();
  int g = GpuOf(slot);
  if (g < 0) return std::nullopt;
  return gpus_[static_cast<size_t>(g)].visible;
}

Result<std::string> GpuPlacement::CheckDevice(const std::string& model, const std::string& device) const {
  if (device.empty() || device == "auto") return std::string("auto");
  if (device == "cpu") return device;
  std::string avail = gpus_.empty() ? std::string("shoald places workers on no GPU (")
                                    : "shoald serves on GPUs 0.." + std::to_string(gpus_.size() - 1) + " (";
  avail += hidden_ ? "gpus = none)" : gpus_.empty() ? "none found: driver, CUDA_VISIBLE_DEVICES)" : "the gpus setting)";
  if (device == "cuda") {
    if (gpus_.empty()) return Status(Code::kUnavailable, "model '" + model + "' cannot load on cuda: " + avail);
    return device;
  }
  if (device.rfind("cuda:", 0) == 0) {
    char* end = nullptr;
    long i = strtol(device.c_str() + 5, &end, 10);
    if (end != device.c_str() + 5 && *end == '\0' && i >= 0 && static_cast<size_t>(i) < gpus_.size()) return device;
    return Status(Code::kUnavailable, "model '" + model + "' cannot load on " + device + ": " + avail);
  }
  return Status::BadRequest("model '" + model + "': device '" + device + "' is not one of auto, cpu, cuda, cuda:N");
}

bool GpuPlacement::Knows(const std::string& bus) const {
  for (const auto& g : gpus_) {
    if (g.bus == bus) return true;
  }
  return false;
}

bool GpuPlacement::Places(int slot, const std::string& device) const {
  if (device.rfind("cuda:", 0) != 0) return true;
  return GpuOf(slot) == std::atoi(device.c_str() + 5);
}

std::string GpuPlacement::WorkerDevice(const std::string& device) {
  if (device.rfind("cuda", 0) == 0) return "cuda";
  return device.empty() ? "auto" : device;
}

}  // namespace shoal
