// Archive reader: validates a model archive (a zip: torch.package or TorchScript) without
// running anything in it, and says where each record's bytes are.
//
// The one zip reader of shoal: shoald checks every load with it (on the open file a client
// passed), the worker asks it what kind an archive is, and Python (`shoal inspect`, `--repack`, mapped loading) reads
// archives through it (shoal._native.read_archive). It is pure (bytes in, ArchiveInfo or
// a BadRequest out), so it is fuzzed alone (tests/fuzz). ParseArchive rejects: not a zip,
// truncated files, records outside the file, encrypted records, names that are empty,
// absolute or contain "..", duplicate names, records outside one top-level folder, a
// missing entry pickle or one that is not a pickle (package_format/served_object.h), tensor storages that are compressed or not 64-byte aligned
// (workers map them in place), records neither stored nor deflated, compressed records
// of a torch.package archive (its writer stores them all), and stored records other than
// storages whose CRC-32 does not match. ReadArchive reads the same, but reports the first of those
// policy violations in `problem` instead of failing, so that tools can still describe
// (and repack) an archive shoal would refuse. Zip64 is supported. The manifest's keys that
// shoald acts on are read here too (package_format/manifest.h): a manifest that is
// compressed or that they cannot be read from is a reason to refuse the archive.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "package_format/manifest.h"
#include "shoal/status.h"

namespace shoal {

enum class ArchiveKind { kPackage, kTorchScript, kUnknown };

struct ArchiveRecord {
  std::string name;      // without the archive's top-level folder (as stored if outside it)
  std::string stored_name;  // as in the zip's central directory
  uint64_t offset = 0;   // of the record's data in the file
  uint64_t size = 0;     // stored (compressed) size
  uint64_t uncompressed = 0;
  uint16_t method = 0;   // 0 = stored, 8 = deflate
  uint32_t crc32 = 0;    // of the uncompressed bytes
  uint16_t dos_time = 0, dos_date = 0;  // modification time, MS-DOS format
  bool encrypted = false;
  bool storage = false;  // a tensor storage (.data/N.storage or data/N)
};

struct ArchiveInfo {
  ArchiveKind kind = ArchiveKind::kPackage;
  std::string prefix;    // the top-level folder every record sits in
  std::vector<ArchiveRecord> records;
  // _shoal/manifest.json, or shoal/manifest.json in older exports (a TorchScript archive's:
  // the extra file extra/shoal/manifest.json)
  bool has_manifest = false;
  ManifestPolicy policy;  // what it says shoald must allow (package_format/manifest.h)
  size_t storages = 0;
  uint64_t storage_bytes = 0;
  // A torch.package archive's entry pickle, the served object: the one asked for, else
  // the manifest's "entry", else model/model.pkl. Empty for other kinds.
  std::string entry;
  // Whether its tensors were saved from a CUDA device (PickleNamesCuda over the entry
  // pickle, a TorchScript archive's data.pkl; a compressed one counts as CUDA): where
  // device "auto" puts them.
  bool saved_on_cuda = false;
  // ReadArchive only: why shoal would refuse to serve this archive (empty: servable).
  std::string problem;
};

constexpr uint64_t kStorageAlignment = 64;

// Fails only when `file` is not a readable zip (bad structure, records outside it).
// `entry`: the pickle a load asks for ("package/resource"; empty: the manifest's or
// model/model.pkl); a torch.package archive without that pickle is refused.
Result<ArchiveInfo> ReadArchive(std::string_view file, std::string_view entry = {});
// ReadArchive, and a BadRequest carrying `problem` when there is one.
Result<ArchiveInfo> ParseArchive(std::string_view file, std::string_view entry = {});
// Maps `path` read-only and parses it; errors start with "archive PATH: ".
Result<ArchiveInfo> InspectArchiveFile(const std::string& path, std::string_view entry = {});
// Maps `path` read-only and reads it (ReadArchive); errors start with "archive PATH: ".
Result<ArchiveInfo> ReadArchiveFile(const std::string& path, std::string_view entry = {});
// The same for an open file (it stays open): what shoald checks a load with and workers
// ask, since neither opens an archive path on a client's behalf. `label` names the file in
// errors ("archive LABEL: ").
Result<ArchiveInfo> InspectArchiveFd(int fd, const std::string& label, std::string_view entry = {});
Result<ArchiveInfo> ReadArchiveFd(int fd, const std::string& label, std::string_view entry = {});

// Whether a tensor pickle (a TorchScript archive's data.pkl) puts a storage on a CUDA
// device: a persistent id ('storage', type, key, location, numel) whose location is
// "cuda" or "cuda:N", written out or fetched from the pickle's memo. Strings elsewhere
// (a module attribute "cuda") do not count. The device a TorchScript model was exported
// for; one rule for C++ and Python.
bool PickleNamesCuda(std::string_view pickle);

}  // namespace shoal
