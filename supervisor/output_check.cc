#include "supervisor/output_check.h"

#include <string>
#include <string_view>

#include "protocol/descriptor.h"

namespace shoal {

namespace {

Status Check(const msgpack::object& tree, const ArenaSizeFn& arena_size, int depth, std::vector<uint64_t>* blocks) {
  if (depth > kMaxOutputDepth) return Status::Internal("output structure nested too deeply");
  if (tree.type != msgpack::type::MAP || tree.via.map.size != 1) {
    return Status::Internal("worker sent a malformed output tree");
  }
  const auto& kv = tree.via.map.ptr[0];
  if (kv.key.type != msgpack::type::STR) return Status::Internal("worker sent a malformed output tree");
  std::string_view kind(kv.key.via.str.ptr, kv.key.via.str.size);
  if (kind == "tensor") {
    auto d = Descriptor::Parse(kv.val);
    if (!d.ok()) return Status::Internal("worker sent a bad output descriptor: " + d.status().message());
    uint64_t size = 0;
    if (!arena_size(d->arena, &size)) return Status::Internal("worker returned a tensor in a foreign arena");
    if (auto st = d->CheckBounds(size); !st.ok()) return Status::Internal(st.message());
    auto extent = d->Extent();
    if (extent.ok() && *extent > 0) blocks->push_back(d->block);
    return Status::Ok();
  }
  if (kind == "tuple" || kind == "list" || kind == "dict") {
    if (kv.val.type != msgpack::type::ARRAY) return Status::Internal("malformed output " + std::string(kind));
    for (uint32_t i = 0; i < kv.val.via.array.size; ++i) {
      const msgpack::object* child = &kv.val.via.array.ptr[i];
      if (kind == "dict") {  // [key, node] pairs
        if (child->type != msgpack::type::ARRAY || child->via.array.size != 2) {
          return Status::Internal("malformed output dict entry");
        }
        child = &child->via.array.ptr[1];
      }
      if (auto st = Check(*child, arena_size, depth + 1, blocks); !st.ok()) return st;
    }
    return Status::Ok();
  }
  if (kind == "value" || kind == "float") return Status::Ok();
  return Status::Internal("unknown output node '" + std::string(kind) + "'");
}

}  // namespace

Status CheckOutputTree(const msgpack::object& tree, const ArenaSizeFn& arena_size, std::vector<uint64_t>* blocks) {
  return Check(tree, arena_size, 0, blocks);
}

}  // namespace shoal
