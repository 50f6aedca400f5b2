// Archive reader: validates a model archive (a zip: torch.package or TorchScript) without
// running anything in it, and says where each record's bytes are.
//
// ParseArchive is pure (bytes in, ArchiveInfo or a BadRequest out), so it is fuzzed alone
// (tests/fuzz). It rejects: not a zip, truncated files, records outside the file, names
// that are empty, absolute or contain "..", duplicate names, a missing entry pickle,
// and tensor storages that are compressed or not 64-byte aligned (workers map them in
// place). Zip64 is supported. Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/status.h"

namespace shoal {

enum class ArchiveKind { kPackage, kTorchScript };

struct ArchiveRecord {
  std::string name;      // without the archive's top-level folder
  uint64_t offset = 0;   // of the record's data in the file
  uint64_t size = 0;     // stored (compressed) size
  uint64_t uncompressed = 0;
  uint16_t method = 0;   // 0 = stored, 8 = deflate
  bool storage = false;  // a tensor storage (.data/N.storage or data/N)
};

struct ArchiveInfo {
  ArchiveKind kind = ArchiveKind::kPackage;
  std::string prefix;    // the top-level folder every record sits in
  std::vector<ArchiveRecord> records;
  bool has_manifest = false;  // shoal/manifest.json
  size_t storages = 0;
  uint64_t storage_bytes = 0;
};

constexpr uint64_t kStorageAlignment = 64;

Result<ArchiveInfo> ParseArchive(std::string_view file);
// Maps `path` read-only and parses it; errors start with "archive PATH: ".
Result<ArchiveInfo> InspectArchiveFile(const std::string& path);

}  // namespace shoal
