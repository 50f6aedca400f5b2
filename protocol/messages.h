// Decoding and encoding of shoal's MessagePack control messages (docs/protocol.md).
//
// Decode() bounds every container and string before anything is built, and MapView turns
// a missing or mistyped field into a BadRequest that names the field. Writer wraps
// msgpack's packer. Pure functions: no I/O. Thread-compatible.
#pragma once

#include <cstdint>
#include <msgpack.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "shoal/status.h"

namespace shoal {

constexpr uint32_t kProtocolVersion = 1;

// What Decode() takes, before anything is built: items of an array, entries of a map, and
// bytes of a string or binary. A message beyond them is BAD_REQUEST (from a worker: shoald
// cuts it off), so encoders of what a model returns keep within them (protocol/output_tree.h).
constexpr uint32_t kMaxMessageArrayItems = 4096;
constexpr uint32_t kMaxMessageMapEntries = 256;
constexpr uint32_t kMaxMessageStrBytes = 256 * 1024;

// Parses one message body; the top level must be a map.
Result<msgpack::object_handle> Decode(std::string_view body);

// Typed, error-reporting access to a MessagePack map.
class MapView {
 public:
  explicit MapView(const msgpack::object& o) : o_(o) {}
  static Result<MapView> Of(const msgpack::object& o, const char* what);

  const msgpack::object* Find(std::string_view key) const;
  Result<std::string> Str(std::string_view key) const;
  Result<uint64_t> Uint(std::string_view key) const;
  Result<bool> Bool(std::string_view key) const;
  // Optional fields: nullopt when absent or nil; an error when present with the wrong type.
  Result<std::optional<uint64_t>> OptUint(std::string_view key) const;
  Result<std::optional<std::string>> OptStr(std::string_view key) const;
  Result<const msgpack::object*> Array(std::string_view key) const;

 private:
  const msgpack::object& o_;
};

// Builds one message body.
class Writer {
 public:
  Writer() : pk_(buf_) {}
  msgpack::packer<msgpack::sbuffer>& pk() { return pk_; }
  void Map(uint32_t n) { pk_.pack_map(n); }
  void Key(std::string_view k) { pk_.pack_str(static_cast<uint32_t>(k.size())); pk_.pack_str_body(k.data(), static_cast<uint32_t>(k.size())); }
  void Str(std::string_view s) { Key(s); }
  template <typename T>
  void Val(const T& v) { pk_.pack(v); }
  std::string_view body() const { return {buf_.data(), buf_.size()}; }

 private:
  msgpack::sbuffer buf_;
  msgpack::packer<msgpack::sbuffer> pk_;
};

// Start a message map and write its common fields; `fields` more key/value pairs follow.
// A request: {"v":1,"op":op,"id":id, ...}; a successful reply: {"v":1,"id":id,"ok":true, ...};
// a notice that needs no reply: {"v":1,"op":op, ...}.
void BeginRequest(Writer* w, std::string_view op, uint64_t id, uint32_t fields);
void BeginReply(Writer* w, uint64_t id, uint32_t fields);
void BeginNotice(Writer* w, std::string_view op, uint32_t fields);

// {"v":1,"id":id,"ok":false,"error":{"code":...,"message":...[,"traceback":...]
//  [,"retry_after_ms":n]}[,"poisoned":true]}; `poisoned`: a worker's CUDA context is
// unusable after this job (shoald replaces the worker once it has the answer).
std::string ErrorReply(uint64_t id, const Status& status, std::string_view traceback = {},
                       uint64_t retry_after_ms = 0, bool poisoned = false);
// Reads the "error" map of a reply into a Status (and its traceback, if any).
Status StatusFromReply(const MapView& reply, std::string* traceback = nullptr);

}  // namespace shoal
