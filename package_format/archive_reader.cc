#include "package_format/archive_reader.h"

#include "package_format/served_object.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace shoal {

namespace {

constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kEocd64Sig = 0x06064b50;
constexpr uint32_t kEocd64LocatorSig = 0x07064b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kLocalSig = 0x04034b50;
constexpr size_t kMaxRecords = 1 << 20;
constexpr uint64_t kMaxManifestBytes = 1 << 20;

// The zip's CRC-32 (IEEE, reflected) of `data`: shoald checks the records it reads itself.
uint32_t Crc32(std::string_view data) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  for (char ch : data) crc = table[(crc ^ static_cast<uint8_t>(ch)) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

// Little-endian reads that never pass `end`.
class Cursor {
 public:
  Cursor(std::string_view data, uint64_t pos) : data_(data), pos_(pos) {}
  bool Has(uint64_t n) const { return pos_ <= data_.size() && n <= data_.size() - pos_; }
  uint64_t Read(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    pos_ += bytes;
    return v;
  }
  std::string_view Take(uint64_t n) {
    auto s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  uint64_t pos() const { return pos_; }

 private:
  std::string_view data_;
  uint64_t pos_;
};

Status Bad(const std::string& what) { return Status::BadRequest(what); }

// Records why the archive cannot be served; the first reason is the one reported.
void Refuse(std::string* problem, std::string why) {
  if (problem->empty()) *problem = std::move(why);
}

void Refuse(ArchiveInfo* info, std::string why) { Refuse(&info->problem, std::move(why)); }

bool SafeName(std::string_view name) {
  if (name.empty() || name.front() == '/' || name.find('\\') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos) {
    return false;
  }
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    if (name.substr(start, end - start) == "..") return false;
    start = end + 1;
  }
  return true;
}

bool IsStorage(const std::string& rel, ArchiveKind kind) {
  if (kind != ArchiveKind::kTorchScript) {
    return rel.rfind(".data/", 0) == 0 && rel.size() > 14 && rel.compare(rel.size() - 8, 8, ".storage") == 0;
  }
  return rel.rfind("data/", 0) == 0 && rel.size() > 5;
}

// torch.package writes these records into every archive it makes.
bool IsPackage(const std::set<std::string>& names) {
  return names.count(".data/version") != 0 || names.count(".data/extern_modules") != 0;
}

// OK when info.entry is a pickle record of the archive (stored, not a tensor storage, a
// pickle's first and last opcodes); else why (`origin`: where the name came from, for the
// message), with the pickles the archive does hold.
Status CheckEntryRecord(const ArchiveInfo& info, const std::vector<ArchiveRecord>& raw, std::string_view file,
                        const std::string& origin) {
  const ArchiveRecord* found = nullptr;
  std::vector<std::string> pickles;
  for (const auto& r : raw) {
    if (r.name == info.entry) found = &r;
    if (!r.storage && r.name.size() > 4 && r.name.compare(r.name.size() - 4, 4, ".pkl") == 0) pickles.push_back(r.name);
  }
  std::string held;
  for (size_t i = 0; i < pickles.size() && i < 8; ++i) held += (i ? ", " : "") + pickles[i];
  if (pickles.size() > 8) held += " and " + std::to_string(pickles.size() - 8) + " more";
  held = pickles.empty() ? "it holds no pickle (.pkl) records"
                         : "its pickles are " + held + " (load one with entry=\"package/resource.pkl\", "
                                                   "`shoal load --entry`)";
  if (found == nullptr) return Status::BadRequest("no entry pickle " + info.entry + origin + "; " + held);
  if (found->storage) return Status::BadRequest("entry " + info.entry + " is a tensor storage, not a pickle; " + held);
  if (found->method == 0) {
    // Protocol 2 and later open with PROTO (0x80, version); every pickle ends with STOP.
    std::string_view bytes = file.substr(found->offset, found->size);
    if (bytes.size() < 3 || static_cast<unsigned char>(bytes[0]) != 0x80 || bytes[1] < 2 || bytes[1] > 5 ||
        bytes.back() != '.') {
      return Status::BadRequest("entry " + info.entry + " is not a pickle (torch.package's save_pickle writes "
                                "the served object as one); " + held);
    }
  }
  return Status::Ok();
}

}  // namespace

Result<ArchiveInfo> ReadArchive(std::string_view file, std::string_view entry) {
  if (file.size() < 22) return Bad("not a zip file (" + std::to_string(file.size()) + " bytes, too short)");
  // End of central directory: the last 22+ bytes, after an optional comment.
  uint64_t eocd = UINT64_MAX;
  uint64_t lowest = file.size() > 22 + 65535 ? file.size() - 22 - 65535 : 0;
  for (uint64_t p = file.size() - 22 + 1; p-- > lowest;) {
    Cursor c(file, p);
    if (c.Read(4) == kEocdSig) {
      eocd = p;
      break;
    }
  }
  if (eocd == UINT64_MAX) {
    return Bad("not a zip file (no end-of-central-directory record; truncated or another format)");
  }
  Cursor e(file, eocd + 4);
  e.Read(2);  // this disk
  e.Read(2);  // disk with the central directory
  e.Read(2);  // entries on this disk
  uint64_t entries = e.Read(2);
  uint64_t cd_size = e.Read(4);
  uint64_t cd_offset = e.Read(4);
  if (entries == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    // Zip64: the locator sits right before the EOCD.
    if (eocd < 20) return Bad("zip64 archive without its locator (truncated?)");
    Cursor loc(file, eocd - 20);
    if (loc.Read(4) != kEocd64LocatorSig) return Bad("zip64 archive without its locator (truncated?)");
    loc.Read(4);
    uint64_t eocd64 = loc.Read(8);
    Cursor z(file, eocd64);
    if (!z.Has(56) || z.Read(4) != kEocd64Sig) return Bad("zip64 end record missing or outside the file");
    z.Read(8);   // record size
    z.Read(4);   // versions
    z.Read(4);   // this disk
    z.Read(4);   // cd disk
    z.Read(8);   // entries on this disk
    entries = z.Read(8);
    cd_size = z.Read(8);
    cd_offset = z.Read(8);
  }
  if (cd_offset > file.size() || cd_size > file.size() - cd_offset) {
    return Bad("the central directory lies outside the file (truncated?)");
  }
  if (entries > kMaxRecords) return Bad("too many records (" + std::to_string(entries) + ")");

  ArchiveInfo info;
  std::set<std::string> seen;
  Cursor c(file, cd_offset);
  std::vector<ArchiveRecord> raw;
  raw.reserve(entries);
  for (uint64_t i = 0; i < entries; ++i) {
    if (!c.Has(46) || c.Read(4) != kCentralSig) return Bad("corrupt central directory at record " + std::to_string(i));
    c.Read(2);  // made by
    c.Read(2);  // needed
    uint16_t flags = static_cast<uint16_t>(c.Read(2));
    uint16_t method = static_cast<uint16_t>(c.Read(2));
    uint16_t dos_time = static_cast<uint16_t>(c.Read(2));
    uint16_t dos_date = static_cast<uint16_t>(c.Read(2));
    uint32_t crc = static_cast<uint32_t>(c.Read(4));
    uint64_t csize = c.Read(4);
    uint64_t usize = c.Read(4);
    uint64_t nlen = c.Read(2);
    uint64_t elen = c.Read(2);
    uint64_t clen = c.Read(2);
    c.Read(2);  // disk
    c.Read(2);  // internal attributes
    c.Read(4);  // external attributes
    uint64_t lho = c.Read(4);
    if (!c.Has(nlen + elen + clen)) return Bad("corrupt central directory at record " + std::to_string(i));
    std::string name(c.Take(nlen));
    std::string_view extra = c.Take(elen);
    c.Take(clen);
    // Zip64 extra field: the 0xffffffff fields, in order.
    for (Cursor x(extra, 0); x.Has(4);) {
      uint16_t id = static_cast<uint16_t>(x.Read(2));
      uint16_t len = static_cast<uint16_t>(x.Read(2));
      if (!x.Has(len)) break;
      if (id != 0x0001) {
        x.Take(len);
        continue;
      }
      Cursor z(x.Take(len), 0);
      if (usize == 0xffffffff && z.Has(8)) usize = z.Read(8);
      if (csize == 0xffffffff && z.Has(8)) csize = z.Read(8);
      if (lho == 0xffffffff && z.Has(8)) lho = z.Read(8);
    }
    if (flags & 0x1) Refuse(&info, "record '" + name + "' is encrypted");
    if (!SafeName(name)) Refuse(&info, "record name '" + name + "' is unsafe (empty, absolute or with '..')");
    if (!seen.insert(name).second) Refuse(&info, "duplicate record '" + name + "'");
    Cursor l(file, lho);
    if (!l.Has(30) || l.Read(4) != kLocalSig) return Bad("record '" + name + "': local header missing (truncated?)");
    l.Take(22);  // skipped: the central directory says the same (Read is for at most 8 bytes)
    uint64_t lnlen = l.Read(2);
    uint64_t lelen = l.Read(2);
    uint64_t data = lho + 30 + lnlen + lelen;
    if (data > file.size() || csize > file.size() - data) {
      return Bad("record '" + name + "' runs past the end of the file (truncated?)");
    }
    ArchiveRecord r;
    r.name = name;
    r.stored_name = std::move(name);
    r.offset = data;
    r.size = csize;
    r.uncompressed = usize;
    r.method = method;
    r.crc32 = crc;
    r.dos_time = dos_time;
    r.dos_date = dos_date;
    r.encrypted = (flags & 0x1) != 0;
    raw.push_back(std::move(r));
  }
  if (raw.empty()) return Bad("the zip holds no records");

  // Every record sits under one top-level folder (the writer's archive name).
  auto slash = raw[0].name.find('/');
  info.prefix = slash == std::string::npos ? "" : raw[0].name.substr(0, slash + 1);
  for (auto& r : raw) {
    if (info.prefix.empty() || r.name.rfind(info.prefix, 0) != 0) {
      Refuse(&info, "records are not all under one top-level folder ('" + r.name +
                        "'); this is not a torch.package or TorchScript archive");
      continue;
    }
    r.name = r.name.substr(info.prefix.size());
  }
  std::set<std::string> names;
  for (const auto& r : raw) names.insert(r.name);
  // torch::deploy's model/model.pkl, or torch.package's own records (a MultiPy package
  // may serve another pickle, named by the load or the manifest).
  if (names.count(std::string(kDefaultEntry)) || (!names.count("constants.pkl") && IsPackage(names))) {
    info.kind = ArchiveKind::kPackage;
  } else if (names.count("data.pkl") && names.count("constants.pkl")) {
    info.kind = ArchiveKind::kTorchScript;
  } else if (IsPackage(names)) {
    info.kind = ArchiveKind::kPackage;
  } else {
    info.kind = ArchiveKind::kUnknown;
    Refuse(&info, "no entry pickle model/model.pkl (and not a TorchScript archive); export the model with "
                  "shoal.export or `shoal package`");
  }
  for (auto& r : raw) r.storage = IsStorage(r.name, info.kind);
  // The manifest's keys that shoald acts on, read in place like the storages. What the
  // archive serves (the entry pickle, which the manifest may name) is checked first; what
  // is wrong with the manifest itself is reported after the records' layout and damage.
  std::string manifest_problem;
  // A torch.package archive's in _shoal/ (shoal.export since 2026-12-07), else in shoal/
  // (before: a folder named like the extern module shoal, which torch.package's own
  // importer refuses when the model's code imports shoal); a TorchScript archive's is an
  // extra file.
  const std::string manifest = info.kind == ArchiveKind::kTorchScript ? "extra/shoal/manifest.json"
                               : names.count("_shoal/manifest.json") != 0 ? "_shoal/manifest.json"
                                                                          : "shoal/manifest.json";
  info.has_manifest = names.count(manifest) != 0;
  for (const auto& r : raw) {
    if (r.name != manifest) continue;
    if (r.method != 0) {
      Refuse(&manifest_problem, "its manifest " + r.name + " is compressed; shoald reads it in place "
                                "(fix it with `shoal package --repack IN -o OUT`)");
    } else if (r.size > kMaxManifestBytes) {
      Refuse(&manifest_problem,
             "its manifest " + r.name + " is larger than " + std::to_string(kMaxManifestBytes) + " bytes");
    } else if (auto policy = ParseManifestPolicy(file.substr(r.offset, r.size), r.name); !policy.ok()) {
      Refuse(&manifest_problem, policy.status().message());
    } else if (auto st = CheckBatchPolicy(policy->batching, "its manifest's batching"); !st.ok()) {
      Refuse(&manifest_problem, st.message());
    } else if (policy->batching.on() && info.kind == ArchiveKind::kTorchScript) {
      Refuse(&manifest_problem,
             "its manifest asks for dynamic batching, which shoal does not do for TorchScript archives yet; "
             "export the model as a torch.package (shoal.export) to batch it");
    } else {
      info.policy = *policy;
    }
  }
  if (info.kind == ArchiveKind::kPackage) {
    if (!entry.empty() || !info.policy.entry.empty()) {
      info.entry = std::string(entry.empty() ? info.policy.entry : entry);
      if (auto st = CheckEntryName(info.entry); !st.ok()) Refuse(&info, st.message());
    } else {
      info.entry = std::string(kDefaultEntry);
    }
    if (!entry.empty() && !info.policy.entry.empty() && !names.count(info.policy.entry)) {
      Refuse(&info, "its manifest names entry '" + info.policy.entry + "', which the archive does not contain");
    }
    const std::string origin =
        entry.empty() && !info.policy.entry.empty() ? " (its manifest names entry '" + info.policy.entry + "')" : "";
    if (auto st = CheckEntryRecord(info, raw, file, origin); !st.ok()) Refuse(&info, st.message());
  }
  for (const auto& r : raw) {
    if (!r.storage) continue;
    if (r.method != 0) {
      Refuse(&info, "storage record " + r.name + " is compressed; shoal maps weights in place and needs them stored "
                    "(fix it with `shoal package --repack IN -o OUT`)");
    } else if (r.offset % kStorageAlignment != 0) {
      Refuse(&info, "storage record " + r.name + " starts at byte " + std::to_string(r.offset) + ", not " +
                        std::to_string(kStorageAlignment) +
                        "-byte aligned (fix it with `shoal package --repack IN -o OUT`)");
    }
    ++info.storages;
    info.storage_bytes += r.size;
  }
  // Records read as bytes (pickles, code, the manifest) must be intact; storages, mapped
  // in place and possibly huge, are not summed.
  for (const auto& r : raw) {
    if (r.method != 0 && r.method != 8) {
      Refuse(&info, "record " + r.name + " uses zip compression method " + std::to_string(r.method) +
                        "; shoal reads stored and deflated records");
    } else if (r.method != 0 && info.kind == ArchiveKind::kPackage) {  // torch.package stores every record
      Refuse(&info, "record " + r.name + " is compressed; shoal reads torch.package records in place "
                    "(fix it with `shoal package --repack IN -o OUT`)");
    } else if (!r.storage && r.method == 0 && Crc32(file.substr(r.offset, r.size)) != r.crc32) {
      Refuse(&info, "record " + r.name + " is damaged (CRC mismatch)");
    }
  }
  if (!manifest_problem.empty()) Refuse(&info, manifest_problem);
  // Where "auto" puts the tensors: the entry pickle's storage locations.
  const std::string pickle = info.kind == ArchiveKind::kTorchScript ? "data.pkl" : info.entry;
  for (const auto& r : raw) {
    if (r.name != pickle) continue;
    info.saved_on_cuda = r.method != 0 || PickleNamesCuda(file.substr(r.offset, r.size));
  }
  info.records = std::move(raw);
  return info;
}

Result<ArchiveInfo> ParseArchive(std::string_view file, std::string_view entry) {
  auto info = ReadArchive(file, entry);
  if (info.ok() && !info->problem.empty()) return Bad(info->problem);
  return info;
}

namespace {
// Maps the open file `fd` read-only and runs `read` over its bytes; errors start with
// "archive LABEL: ". `fd` stays open.
Result<ArchiveInfo> ReadFd(int fd, const std::string& label, std::string_view entry,
                           Result<ArchiveInfo> (*read)(std::string_view, std::string_view)) {
  struct stat st;
  if (fstat(fd, &st) != 0) return Status::FromErrno("archive " + label, errno);
  if (!S_ISREG(st.st_mode)) return Status::BadRequest("archive " + label + ": not a regular file");
  size_t size = static_cast<size_t>(st.st_size);
  void* p = size ? mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0) : nullptr;
  if (size && p == MAP_FAILED) return Status::FromErrno("cannot map archive " + label, errno);
  auto info = read(std::string_view(static_cast<const char*>(p), size), entry);
  if (p) munmap(p, size);
  if (!info.ok()) return Status(info.status().code(), "archive " + label + ": " + info.status().message());
  return info;
}

Result<ArchiveInfo> ReadFile(const std::string& path, std::string_view entry,
                             Result<ArchiveInfo> (*read)(std::string_view, std::string_view)) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("cannot read archive " + path, errno);
  auto info = ReadFd(fd, path, entry, read);
  close(fd);
  return info;
}
}  // namespace

Result<ArchiveInfo> InspectArchiveFile(const std::string& path, std::string_view entry) {
  return ReadFile(path, entry, ParseArchive);
}

Result<ArchiveInfo> ReadArchiveFile(const std::string& path, std::string_view entry) {
  return ReadFile(path, entry, ReadArchive);
}

namespace {

// What PickleNamesCuda keeps of a pickle's values: strings of up to 12 bytes ("storage",
// "cuda:N"), and of a tuple of up to 8 items only whether it reads ('storage', _, _,
// "cuda...", ...); the rest is opaque. An item is a few bytes with no heap (short strings
// live inside std::string), and the machine holds at most kMaxPickleItems of them, so no
// pickle makes it use more than a few tens of MiB, whatever it duplicates or memoizes.
struct PickleItem {
  enum Kind : uint8_t { kOpaque, kString, kTuple } kind = kOpaque;
  bool storage_on_cuda = false;  // kTuple: a storage's persistent id with a CUDA location
  std::string str;               // kString
};
constexpr size_t kMaxPickleItems = size_t{1} << 20;

bool IsCudaLocation(std::string_view s) {
  if (s.substr(0, 4) != "cuda") return false;
  if (s.size() == 4) return true;
  if (s.size() < 6 || s[4] != ':') return false;
  for (char c : s.substr(5)) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

bool PickleNamesCuda(std::string_view pkl) {
  // A small pickle machine: it follows the stack, marks and memo far enough to see each
  // persistent id, ('storage', type, key, location, numel) in torch's tensor pickles, and
  // reads its location, whether written out or fetched from the memo (torch's pickler
  // writes a repeated string once). Other values, strings included, decide nothing.
  std::vector<PickleItem> stack;
  std::vector<size_t> marks;
  std::map<uint64_t, PickleItem> memo;
  size_t at = 0;
  auto le = [&](size_t n) {  // an n-byte little-endian argument, or nullopt past the end
    std::optional<uint64_t> v;
    if (pkl.size() - at < n) return v;
    uint64_t x = 0;
    for (size_t i = 0; i < n; ++i) x |= static_cast<uint64_t>(static_cast<uint8_t>(pkl[at + i])) << (8 * i);
    at += n;
    return v = x;
  };
  auto pop = [&](size_t n) {
    for (size_t i = 0; i < n && !stack.empty(); ++i) stack.pop_back();
  };
  auto to_mark = [&]() {  // the items above the last mark, which is removed
    std::vector<PickleItem> items;
    size_t m = marks.empty() ? 0 : marks.back();
    if (!marks.empty()) marks.pop_back();
    if (m < stack.size()) {
      items.assign(std::make_move_iterator(stack.begin() + static_cast<std::ptrdiff_t>(m)),
                   std::make_move_iterator(stack.end()));
      stack.resize(m);
    }
    return items;
  };
  auto tuple_of = [](const std::vector<PickleItem>& items) {
    PickleItem t;
    t.kind = PickleItem::kTuple;
    t.storage_on_cuda = items.size() >= 4 && items.size() <= 8 && items[0].kind == PickleItem::kString &&
                        items[0].str == "storage" && items[3].kind == PickleItem::kString &&
                        IsCudaLocation(items[3].str);
    return t;
  };
  auto line = [&]() {  // skips a newline-terminated argument
    size_t nl = pkl.find('\n', at);
    if (nl == std::string_view::npos) return false;
    at = nl + 1;
    return true;
  };
  while (at < pkl.size()) {
    if (stack.size() + memo.size() + marks.size() > kMaxPickleItems) return false;  // not a pickle torch writes
    auto op = static_cast<uint8_t>(pkl[at++]);
    std::optional<uint64_t> n;
    switch (op) {
      case '(': marks.push_back(stack.size()); break;
      case '.': return false;  // STOP
      case '0': pop(1); break;
      case '1': to_mark(); break;
      case '2': if (!stack.empty()) stack.push_back(stack.back()); break;
      case 'N': case ']': case '}': case ')': case 0x88: case 0x89: case 0x8f: case 0x97:
        stack.emplace_back(); break;
      case 'R': case 0x81: case 0x93: pop(2); stack.emplace_back(); break;  // REDUCE, NEWOBJ, STACK_GLOBAL
      case 0x92: pop(3); stack.emplace_back(); break;                     // NEWOBJ_EX
      case 'b': case 'a': case 0x98: pop(op == 0x98 ? 0 : 1); break;      // BUILD, APPEND, READONLY_BUFFER
      case 's': pop(2); break;                                            // SETITEM
      case 'e': case 'u': case 0x90: to_mark(); break;                    // APPENDS, SETITEMS, ADDITEMS
      case 'l': case 'd': case 0x91: case 'o': to_mark(); stack.emplace_back(); break;
      case 't': stack.push_back(tuple_of(to_mark())); break;
      case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
        size_t k = op - 0x84u;
        std::vector<PickleItem> items;
        if (stack.size() >= k) {
          items.assign(stack.end() - static_cast<std::ptrdiff_t>(k), stack.end());
          stack.resize(stack.size() - k);
        }
        stack.push_back(tuple_of(std::move(items)));
        break;
      }
      case 'Q': {  // BINPERSID: is this a storage, and where was it?
        if (stack.empty()) break;
        if (stack.back().kind == PickleItem::kTuple && stack.back().storage_on_cuda) return true;
        stack.back() = PickleItem();
        break;
      }
      case 0x94: if (!stack.empty()) memo[memo.size()] = stack.back(); break;  // MEMOIZE
      case 'q': case 'r':                                                     // BINPUT, LONG_BINPUT
        if (!(n = le(op == 'q' ? 1 : 4))) return false;
        if (!stack.empty()) memo[*n] = stack.back();
        break;
      case 'h': case 'j': {  // BINGET, LONG_BINGET
        if (!(n = le(op == 'h' ? 1 : 4))) return false;
        auto m = memo.find(*n);
        stack.push_back(m == memo.end() ? PickleItem() : m->second);
        break;
      }
      case 0x8c: case 'X': case 0x8d: {  // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
        if (!(n = le(op == 0x8c ? 1 : op == 'X' ? 4 : 8)) || *n > pkl.size() - at) return false;
        PickleItem str;
        if (*n <= 12) {  // "storage", "cuda:N": longer strings are kept as opaque
          str.kind = PickleItem::kString;
          str.str = std::string(pkl.substr(at, *n));
        }
        at += *n;
        stack.push_back(std::move(str));
        break;
      }
      case 'C': case 'B': case 0x8e: case 'U': case 'T': case 0x96: case 0x8a: case 0x8b: {  // bytes, old strings, longs
        size_t width = (op == 'C' || op == 'U' || op == 0x8a) ? 1 : (op == 'B' || op == 'T' || op == 0x8b) ? 4 : 8;
        if (!(n = le(width)) || *n > pkl.size() - at) return false;
        at += *n;
        stack.emplace_back();
        break;
      }
      case 'J': case 'K': case 'M': case 'G': case 0x82: case 0x83: case 0x84: {  // ints, float, ext
        size_t width = op == 'J' || op == 0x84 ? 4 : op == 'K' || op == 0x82 ? 1 : op == 'G' ? 8 : 2;
        if (!le(width)) return false;
        stack.emplace_back();
        break;
      }
      case 0x80: if (!le(1)) return false; break;  // PROTO
      case 0x95: if (!le(8)) return false; break;  // FRAME
      case 'I': case 'L': case 'S': case 'V': case 'F': case 'P': case 'g':
        if (!line()) return false;
        stack.emplace_back();  // text forms (protocol 0): not what torch writes
        break;
      case 'p': if (!line()) return false; break;  // PUT
      case 'c': case 'i':                          // GLOBAL, INST: module and name lines
        if (!line() || !line()) return false;
        if (op == 'i') to_mark();
        stack.emplace_back();
        break;
      default: return false;  // not a pickle we know
    }
  }
  return false;
}

Result<ArchiveInfo> InspectArchiveFd(int fd, const std::string& label, std::string_view entry) {
  return ReadFd(fd, label, entry, ParseArchive);
}

Result<ArchiveInfo> ReadArchiveFd(int fd, const std::string& label, std::string_view entry) {
  return ReadFd(fd, label, entry, ReadArchive);
}

}  // namespace shoal
