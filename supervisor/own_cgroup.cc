// shoald's own cgroup and its limits (supervisor/own_cgroup.h).
#include "supervisor/own_cgroup.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace shoal {

std::string ReadSmall(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string ReadValue(const std::string& path) {
  std::string s = ReadSmall(path);
  size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

bool FindOwnCgroup(const std::string& controller, std::string* folder, std::string* mount) {
  // /proc/self/cgroup: "ID:CONTROLLERS:PATH"; v2 is "0::PATH".
  std::string path;
  bool found = false;
  {
    std::istringstream in(ReadSmall("/proc/self/cgroup"));
    std::string line;
    while (std::getline(in, line)) {
      auto a = line.find(':');
      auto b = a == std::string::npos ? a : line.find(':', a + 1);
      if (b == std::string::npos) continue;
      std::string ctrls = line.substr(a + 1, b - a - 1);
      bool match = controller.empty() ? ctrls.empty() && line.substr(0, a) == "0"
                                      : ("," + ctrls + ",").find("," + controller + ",") != std::string::npos;
      if (match) {
        path = line.substr(b + 1);
        found = true;
        break;
      }
    }
  }
  if (!found) return false;
  // /proc/self/mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS".
  std::istringstream in(ReadSmall("/proc/self/mountinfo"));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::vector<std::string> f;
    for (std::string x; fields >> x;) f.push_back(x);
    auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || dash == f.end() || dash + 3 > f.end()) continue;
    const std::string& fstype = *(dash + 1);
    const std::string& superopts = *(dash + 3);
    bool match = controller.empty() ? fstype == "cgroup2"
                                    : fstype == "cgroup" &&
                                          ("," + superopts + ",").find("," + controller + ",") != std::string::npos;
    if (!match) continue;
    const std::string& root = f[3];
    if (path.rfind(root, 0) != 0) continue;  // our cgroup is outside what this mount shows
    std::string rel = root == "/" ? path : path.substr(root.size());
    *mount = f[4];
    *folder = f[4] + (rel == "/" ? "" : rel);
    return true;
  }
  return false;
}

namespace {
// `folder`, then each ancestor up to and including `mount`.
template <typename Fn>
void ForEachUp(const std::string& folder, const std::string& mount, Fn fn) {
  for (std::string dir = folder; dir.size() >= mount.size(); dir = dir.substr(0, dir.rfind('/'))) {
    fn(dir);
    if (dir == mount || dir.find('/') == std::string::npos) break;
  }
}
}  // namespace

uint64_t CgroupLimit(const std::string& folder, const std::string& mount, const std::string& file) {
  uint64_t lowest = ~uint64_t{0};
  ForEachUp(folder, mount, [&](const std::string& dir) {
    std::string text = ReadValue(dir + "/" + file);
    if (!text.empty() && text != "max") lowest = std::min<uint64_t>(lowest, std::strtoull(text.c_str(), nullptr, 10));
  });
  return lowest;
}

std::optional<int> CgroupCpuQuota(const std::string& folder, const std::string& mount) {
  std::optional<int> lowest;
  auto take = [&](long long quota, long long period) {
    if (quota <= 0 || period <= 0) return;
    int cpus = static_cast<int>(std::max<long long>(1, (quota + period - 1) / period));
    lowest = lowest ? std::min(*lowest, cpus) : cpus;
  };
  ForEachUp(folder, mount, [&](const std::string& dir) {
    std::istringstream v2(ReadSmall(dir + "/cpu.max"));  // "QUOTA PERIOD" or "max PERIOD"
    std::string quota;
    long long period = 0;
    if (v2 >> quota >> period && quota != "max") take(std::atoll(quota.c_str()), period);
    std::string v1_quota = ReadValue(dir + "/cpu.cfs_quota_us");  // -1: none
    std::string v1_period = ReadValue(dir + "/cpu.cfs_period_us");
    if (!v1_quota.empty() && !v1_period.empty()) take(std::atoll(v1_quota.c_str()), std::atoll(v1_period.c_str()));
  });
  return lowest;
}

int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  std::string folder, mount;
  for (const char* controller : {"", "cpu"}) {  // v2, then v1's cpu hierarchy
    if (!FindOwnCgroup(controller, &folder, &mount)) continue;
    if (auto quota = CgroupCpuQuota(folder, mount)) cpus = std::min(cpus, *quota);
  }
  return std::max(cpus, 1);
}

}  // namespace shoal
