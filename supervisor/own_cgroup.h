// shoald's own cgroup: where it is, and the limits it and its ancestors set on what shoald
// may use (memory for worker_memory_mb = auto, CPUs for spin_us = auto).
// Thread-safety: free functions reading small kernel files; call from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace shoal {

// The text of a small file; empty when it cannot be read.
std::string ReadSmall(const std::string& path);
// The same without surrounding whitespace: a cgroup value ("max", "250000 100000").
std::string ReadValue(const std::string& path);

// Where the hierarchy that has `controller` (v1; "" for the v2 hierarchy) is mounted, and
// the folder of shoald's own cgroup in it; false when there is none.
bool FindOwnCgroup(const std::string& controller, std::string* folder, std::string* mount);

// The lowest number in `file` of `folder` and its ancestors up to `mount` (v2 "max" and
// v1's huge "unlimited" count as none: ~0).
uint64_t CgroupLimit(const std::string& folder, const std::string& mount, const std::string& file);

// The CPUs the quotas of `folder` and its ancestors up to `mount` allow, rounded up: v2
// cpu.max ("QUOTA PERIOD", "max PERIOD"), or v1 cpu.cfs_quota_us / cpu.cfs_period_us
// (-1: none); nullopt where none sets a quota.
std::optional<int> CgroupCpuQuota(const std::string& folder, const std::string& mount);

// The CPUs shoald may use: its affinity mask, or its cgroup's CPU quota when lower.
int UsableCpus();

}  // namespace shoal
