#include "protocol/call_tree.h"

#include <set>
#include <vector>

#include "protocol/output_tree.h"
#include "protocol/tree_walk.h"
#include "protocol/utf8.h"

namespace shoal {

namespace {

// Builds nothing: counts nodes, checks strings and input references.
class CallChecker {
 public:
  struct Value {};
  explicit CallChecker(size_t inputs) : seen_(inputs, false) {}

  Status Enter(const TreePath& at) {
    if (++nodes_ > kMaxCallNodes) {
      return TreeError(Code::kBadRequest, at, "more than " + std::to_string(kMaxCallNodes) + " nodes in args and kwargs");
    }
    return Status::Ok();
  }
  Result<Value> Leaf(std::string_view kind, const msgpack::object& val, const TreePath& at) {
    if (kind != "input") {
      return TreeError(Code::kBadRequest, at, "a call refers to its tensors as {\"input\": index}, not \"tensor\"");
    }
    if (val.type != msgpack::type::POSITIVE_INTEGER) {
      return TreeError(Code::kBadRequest, at, "an input index is an unsigned integer");
    }
    uint64_t i = val.via.u64;
    if (i >= seen_.size()) {
      return TreeError(Code::kBadRequest, at,
                       "input index " + std::to_string(i) + " out of range (" + std::to_string(seen_.size()) + " inputs)");
    }
    if (seen_[i]) return TreeError(Code::kBadRequest, at, "input " + std::to_string(i) + " is referenced twice");
    seen_[i] = true;
    return Value{};
  }
  Result<Value> Scalar(const msgpack::object& val, const TreePath& at) {
    if (val.type == msgpack::type::STR) {
      if (auto st = String({val.via.str.ptr, val.via.str.size}, at); !st.ok()) return st;
    }
    return Value{};
  }
  Result<Value> Float(double, const TreePath&) { return Value{}; }
  Result<Value> Sequence(bool, std::vector<Value>, const TreePath&) { return Value{}; }
  Result<Value> NamedTuple(std::string name, std::vector<std::string> fields, std::vector<Value>, const TreePath& at) {
    if (auto st = String(name, at); !st.ok()) return st;
    for (const auto& f : fields) {
      if (auto st = String(f, at); !st.ok()) return st;
    }
    return Value{};
  }
  Result<Value> Dict(std::vector<std::pair<const msgpack::object*, Value>> entries, const TreePath& at) {
    for (const auto& e : entries) {
      if (e.first->type != msgpack::type::STR) continue;
      if (auto st = String({e.first->via.str.ptr, e.first->via.str.size}, at); !st.ok()) return st;
    }
    return Value{};
  }

  // A worker decodes every string as a Python str: one that is not UTF-8 would stop it.
  Status String(std::string_view s, const TreePath& at) const {
    if (s.size() > kMaxCallStringBytes) {
      return TreeError(Code::kBadRequest, at,
                       "a string of " + std::to_string(s.size()) + " bytes (at most " +
                           std::to_string(kMaxCallStringBytes) + ")");
    }
    if (auto bad = FirstNonUtf8(s)) {
      return TreeError(Code::kBadRequest, at,
                       "a string that is not UTF-8 (byte " + std::to_string(*bad) +
                           "); strings reach the model as Python str: send bytes as a uint8 tensor");
    }
    return Status::Ok();
  }
  // The first input no node refers to, or -1.
  int64_t Unreferenced() const {
    for (size_t i = 0; i < seen_.size(); ++i) {
      if (!seen_[i]) return static_cast<int64_t>(i);
    }
    return -1;
  }

 private:
  std::vector<bool> seen_;
  size_t nodes_ = 0;
};

std::string Encode(const msgpack::object& o) {
  Writer w;
  w.pk().pack(o);
  return std::string(w.body());
}

Status Walk(const msgpack::object& node, CallChecker& checker, const TreePath& at) {
  auto v = WalkTree(node, checker, at, 0, kMaxOutputDepth, Code::kBadRequest);
  return v.ok() ? Status::Ok() : v.status();
}

}  // namespace

void PackEncoded(Writer* w, std::string_view encoded) {
  w->pk().pack_bin_body(encoded.data(), static_cast<uint32_t>(encoded.size()));  // already MessagePack
}

Result<CallTree> ParseCallTree(const MapView& infer, size_t inputs) {
  CallTree call;
  auto method = infer.OptStr("method");
  if (!method.ok()) return method.status();
  if (method->has_value() && **method != "forward") {
    // Whether the model allows it is the registry's to say (ModelRegistry::AllowsMethod).
    if (auto st = CheckMethodName(**method); !st.ok()) return st;
    call.method = **method;
  }
  const msgpack::object* args = infer.Find("args");
  const msgpack::object* kwargs = infer.Find("kwargs");
  if (args != nullptr && args->type == msgpack::type::NIL) args = nullptr;
  if (kwargs != nullptr && kwargs->type == msgpack::type::NIL) kwargs = nullptr;
  if (args == nullptr && kwargs == nullptr) return call;
  CallChecker checker(inputs);
  if (args != nullptr) {
    if (args->type != msgpack::type::ARRAY) return Status::BadRequest("args must be an array of nodes");
    TreePath root{nullptr, "args"};
    for (uint32_t i = 0; i < args->via.array.size; ++i) {
      TreePath at{&root, {}, nullptr, i};
      if (auto st = Walk(args->via.array.ptr[i], checker, at); !st.ok()) return st;
    }
    call.args = Encode(*args);
  }
  if (kwargs != nullptr) {
    if (kwargs->type != msgpack::type::ARRAY) return Status::BadRequest("kwargs must be an array of [name, node] pairs");
    const auto& arr = kwargs->via.array;
    if (arr.size > kMaxCallKwargs) {
      return Status::BadRequest("too many kwargs (" + std::to_string(arr.size) + ", at most " +
                                std::to_string(kMaxCallKwargs) + ")");
    }
    std::set<std::string> names;
    for (uint32_t i = 0; i < arr.size; ++i) {
      const auto& pair = arr.ptr[i];
      if (pair.type != msgpack::type::ARRAY || pair.via.array.size != 2 ||
          pair.via.array.ptr[0].type != msgpack::type::STR) {
        return Status::BadRequest("kwargs[" + std::to_string(i) + "]: must be a [name, node] pair");
      }
      const auto& key = pair.via.array.ptr[0];
      std::string name(key.via.str.ptr, key.via.str.size);
      if (name.size() > kMaxKeywordBytes || !IsIdentifier(name)) {
        return Status::BadRequest("kwargs[" + std::to_string(i) + "]: keyword name \"" + name.substr(0, kMaxKeywordBytes) +
                                  "\" is not a Python identifier");
      }
      if (!names.insert(name).second) {
        return Status::BadRequest("kwargs[" + std::to_string(i) + "]: keyword \"" + name + "\" given twice");
      }
      TreePath root{nullptr, "kwargs"};
      TreePath at{&root, {}, &key, i};
      if (auto st = Walk(pair.via.array.ptr[1], checker, at); !st.ok()) return st;
    }
    call.kwargs = Encode(*kwargs);
  }
  if (int64_t i = checker.Unreferenced(); i >= 0) {
    return Status::BadRequest("input " + std::to_string(i) + " is referenced by no node of args or kwargs (" +
                              std::to_string(inputs) + " inputs: each is referenced exactly once)");
  }
  return call;
}

}  // namespace shoal
