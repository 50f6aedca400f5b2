#include "supervisor/output_check.h"

#include <string>
#include <string_view>

#include "protocol/descriptor.h"

namespace shoal {

namespace {

class Checker {
public:
  Checker(const ArenaResolveFn &resolve, std::vector<WorkerBlock> *blocks,
          const std::string &worker_gpu)
      : resolve_(resolve), blocks_(blocks), worker_gpu_(worker_gpu) {}
  // Writes into `w` as it goes; the caller drops it on error.
  Status Check(const msgpack::object &tree, int depth, Writer *w);

private:
  const ArenaResolveFn &resolve_;
  std::vector<WorkerBlock> *blocks_;
  const std::string &worker_gpu_;
};

Status Checker::Check(const msgpack::object &tree, int depth, Writer *w) {
  if (depth > kMaxOutputDepth)
    return Status::Internal("output structure nested too deeply");
  if (tree.type != msgpack::type::MAP || tree.via.map.size != 1) {
    return Status::Internal("worker sent a malformed output tree");
  }
  const auto &kv = tree.via.map.ptr[0];
  if (kv.key.type != msgpack::type::STR)
    return Status::Internal("worker sent a malformed output tree");
  std::string_view kind(kv.key.via.str.ptr, kv.key.via.str.size);
  w->Map(1);
  w->Key(kind);
  if (kind == "tensor") {
    auto d = Descriptor::Parse(kv.val);
    if (!d.ok())
      return Status::Internal("worker sent a bad output descriptor: " +
                              d.status().message());
    auto extent = d->Extent();
    bool empty = extent.ok() && *extent == 0;
    if (!empty) {
      OutputArenaRef ref;
      if (!resolve_(d->arena, &ref))
        return Status::Internal("worker returned a tensor in a foreign arena");
      if (auto st = d->CheckBounds(ref.size); !st.ok())
        return Status::Internal(st.message());
      if (ref.by_worker)
        blocks_->push_back({d->arena, d->block});
      d->arena = ref.id;
      d->gpu.clear(); // where its arena is
    } else {
      d->arena = d->block = d->offset = 0; // no bytes, no block
      if (d->gpu != worker_gpu_)
        d->gpu.clear(); // a worker sees its own GPU only
    }
    d->Pack(w);
    return Status::Ok();
  }
  if (kind == "tuple" || kind == "list" || kind == "dict") {
    if (kv.val.type != msgpack::type::ARRAY)
      return Status::Internal("malformed output " + std::string(kind));
    w->pk().pack_array(kv.val.via.array.size);
    for (uint32_t i = 0; i < kv.val.via.array.size; ++i) {
      const msgpack::object *child = &kv.val.via.array.ptr[i];
      if (kind == "dict") { // [key, node] pairs
        if (child->type != msgpack::type::ARRAY || child->via.array.size != 2) {
          return Status::Internal("malformed output dict entry");
        }
        w->pk().pack_array(2);
        w->pk().pack(child->via.array.ptr[0]);
        child = &child->via.array.ptr[1];
      }
      if (auto st = Check(*child, depth + 1, w); !st.ok())
        return st;
    }
    return Status::Ok();
  }
  if (kind == "namedtuple") { // [name, [field, ...], [node, ...]]
    const auto &v = kv.val;
    if (v.type != msgpack::type::ARRAY || v.via.array.size != 3 ||
        v.via.array.ptr[0].type != msgpack::type::STR ||
        v.via.array.ptr[0].via.str.size > kMaxTupleNameBytes ||
        v.via.array.ptr[1].type != msgpack::type::ARRAY ||
        v.via.array.ptr[2].type != msgpack::type::ARRAY ||
        v.via.array.ptr[1].via.array.size != v.via.array.ptr[2].via.array.size) {
      return Status::Internal("malformed output namedtuple");
    }
    const auto &fields = v.via.array.ptr[1].via.array;
    for (uint32_t i = 0; i < fields.size; ++i) {
      if (fields.ptr[i].type != msgpack::type::STR ||
          fields.ptr[i].via.str.size > kMaxTupleNameBytes) {
        return Status::Internal("malformed output namedtuple field");
      }
    }
    w->pk().pack_array(3);
    w->pk().pack(v.via.array.ptr[0]);
    w->pk().pack(v.via.array.ptr[1]);
    const auto &items = v.via.array.ptr[2].via.array;
    w->pk().pack_array(items.size);
    for (uint32_t i = 0; i < items.size; ++i) {
      if (auto st = Check(items.ptr[i], depth + 1, w); !st.ok())
        return st;
    }
    return Status::Ok();
  }
  if (kind == "value" || kind == "float") {
    w->pk().pack(kv.val);
    return Status::Ok();
  }
  return Status::Internal("unknown output node '" + std::string(kind) + "'");
}

} // namespace

Status CheckOutputTree(const msgpack::object &tree,
                       const ArenaResolveFn &resolve, Writer *out,
                       std::vector<WorkerBlock> *blocks,
                       const std::string &worker_gpu) {
  Writer scratch;
  Checker c(resolve, blocks, worker_gpu);
  return c.Check(tree, 0, out != nullptr ? out : &scratch);
}

} // namespace shoal
