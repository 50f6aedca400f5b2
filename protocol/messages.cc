#include "protocol/messages.h"

#include "protocol/output_tree.h"

namespace shoal {

namespace {
// Nesting that the deepest output tree a worker may send needs (protocol/output_tree.h):
// the reply map, then per level of dicts a node map, its entry array and the entry's pair,
// then the tensor's node map, descriptor map and shape array.
constexpr size_t kMaxNesting = 1 + 3 * kMaxOutputDepth + 3;
// Bounds applied before any object is built: element counts, string/bin bytes, nesting.
const msgpack::unpack_limit kLimits(kMaxMessageArrayItems, kMaxMessageMapEntries, kMaxMessageStrBytes,
                                    /*bin=*/kMaxMessageStrBytes, /*ext=*/0, /*depth=*/kMaxNesting);

std::string KeyStr(std::string_view key) { return std::string(key); }
}  // namespace

Result<msgpack::object_handle> Decode(std::string_view body) {
  msgpack::object_handle oh;
  try {
    std::size_t off = 0;
    oh = msgpack::unpack(body.data(), body.size(), off, nullptr, nullptr, kLimits);
    if (off != body.size()) return Status::BadRequest("trailing bytes after the message");
  } catch (const msgpack::size_overflow& e) {
    return Status::BadRequest(std::string("message exceeds a size limit: ") + e.what());
  } catch (const std::exception& e) {
    return Status::BadRequest(std::string("message is not valid MessagePack: ") + e.what());
  }
  if (oh.get().type != msgpack::type::MAP) return Status::BadRequest("message is not a map");
  return oh;
}

Result<MapView> MapView::Of(const msgpack::object& o, const char* what) {
  if (o.type != msgpack::type::MAP) return Status::BadRequest(std::string(what) + " must be a map");
  return MapView(o);
}

const msgpack::object* MapView::Find(std::string_view key) const {
  const auto& m = o_.via.map;
  for (uint32_t i = 0; i < m.size; ++i) {
    const auto& k = m.ptr[i].key;
    if (k.type == msgpack::type::STR && std::string_view(k.via.str.ptr, k.via.str.size) == key) {
      return &m.ptr[i].val;
    }
  }
  return nullptr;
}

Result<std::string> MapView::Str(std::string_view key) const {
  const auto* v = Find(key);
  if (v == nullptr) return Status::BadRequest("missing field '" + KeyStr(key) + "'");
  if (v->type != msgpack::type::STR) return Status::BadRequest("field '" + KeyStr(key) + "' must be a string");
  return std::string(v->via.str.ptr, v->via.str.size);
}

Result<uint64_t> MapView::Uint(std::string_view key) const {
  const auto* v = Find(key);
  if (v == nullptr) return Status::BadRequest("missing field '" + KeyStr(key) + "'");
  if (v->type != msgpack::type::POSITIVE_INTEGER) {
    return Status::BadRequest("field '" + KeyStr(key) + "' must be a non-negative integer");
  }
  return v->via.u64;
}

Result<bool> MapView::Bool(std::string_view key) const {
  const auto* v = Find(key);
  if (v == nullptr) return Status::BadRequest("missing field '" + KeyStr(key) + "'");
  if (v->type != msgpack::type::BOOLEAN) return Status::BadRequest("field '" + KeyStr(key) + "' must be a boolean");
  return v->via.boolean;
}

Result<std::optional<uint64_t>> MapView::OptUint(std::string_view key) const {
  const auto* v = Find(key);
  if (v == nullptr || v->type == msgpack::type::NIL) return std::optional<uint64_t>();
  auto u = Uint(key);
  if (!u.ok()) return u.status();
  return std::optional<uint64_t>(*u);
}

Result<std::optional<std::string>> MapView::OptStr(std::string_view key) const {
  const auto* v = Find(key);
  if (v == nullptr || v->type == msgpack::type::NIL) return std::optional<std::string>();
  auto s = Str(key);
  if (!s.ok()) return s.status();
  return std::optional<std::string>(*s);
}

Result<const msgpack::object*> MapView::Array(std::string_view key) const {
  const auto* v = Find(key);
  if (v == nullptr) return Status::BadRequest("missing field '" + KeyStr(key) + "'");
  if (v->type != msgpack::type::ARRAY) return Status::BadRequest("field '" + KeyStr(key) + "' must be an array");
  return v;
}

void BeginRequest(Writer* w, std::string_view op, uint64_t id, uint32_t fields) {
  w->Map(3 + fields);
  w->Key("v"); w->Val(kProtocolVersion);
  w->Key("op"); w->Str(op);
  w->Key("id"); w->Val(id);
}

void BeginReply(Writer* w, uint64_t id, uint32_t fields) {
  w->Map(3 + fields);
  w->Key("v"); w->Val(kProtocolVersion);
  w->Key("id"); w->Val(id);
  w->Key("ok"); w->Val(true);
}

void BeginNotice(Writer* w, std::string_view op, uint32_t fields) {
  w->Map(2 + fields);
  w->Key("v"); w->Val(kProtocolVersion);
  w->Key("op"); w->Str(op);
}

std::string ErrorReply(uint64_t id, const Status& status, std::string_view traceback, uint64_t retry_after_ms,
                       bool poisoned) {
  Writer w;
  w.Map(poisoned ? 5 : 4);
  w.Key("v"); w.Val(kProtocolVersion);
  w.Key("id"); w.Val(id);
  w.Key("ok"); w.Val(false);
  w.Key("error");
  w.Map(2 + (traceback.empty() ? 0 : 1) + (retry_after_ms ? 1 : 0));
  w.Key("code"); w.Str(CodeName(status.code()));
  w.Key("message"); w.Str(status.message());
  if (!traceback.empty()) { w.Key("traceback"); w.Str(traceback); }
  if (retry_after_ms) { w.Key("retry_after_ms"); w.Val(retry_after_ms); }
  if (poisoned) { w.Key("poisoned"); w.Val(true); }
  return std::string(w.body());
}

Status StatusFromReply(const MapView& reply, std::string* traceback) {
  const auto* e = reply.Find("error");
  if (e == nullptr || e->type != msgpack::type::MAP) return Status::Internal("reply without an error map");
  MapView ev(*e);
  auto code = ev.Str("code");
  auto msg = ev.Str("message");
  if (traceback != nullptr) {
    auto tb = ev.OptStr("traceback");
    if (tb.ok() && tb->has_value()) *traceback = **tb;
  }
  return Status(code.ok() ? CodeFromName(*code) : Code::kInternal, msg.ok() ? *msg : "(no message)");
}

}  // namespace shoal
