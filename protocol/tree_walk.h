// The one reader of shoal's tree grammar (docs/protocol.md, "Output tree", and the call
// structure of an infer, "Call structure"): a node is {"tensor": descriptor} (outputs) or
// {"input": index} (a call's arguments), {"tuple"|"list": [node]}, {"dict": [[key, node]]}
// (keys str or int), {"namedtuple": [name, [field], [node]]}, {"float": number} or
// {"value": nil|bool|int|str}. WalkTree checks the shape of every node, the depth limit and
// the dict keys, and hands each node to a Reader that builds what it wants from it:
// shoald's validator of call structures (protocol/call_tree.h) builds nothing and counts,
// the C++ client and the TorchScript runner build c10::IValues (tensors/tree.h).
// Errors name where the bad node is ("args[1][\"boxes\"]"). Pure; thread-compatible.
#pragma once

#include <msgpack.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shoal/status.h"

namespace shoal {

// Where a node is: a chain from the root's name ("args", "output") through item indices and
// dict keys, rendered only for an error message.
struct TreePath {
  const TreePath* parent = nullptr;
  std::string_view root;      // set on the root only
  const msgpack::object* key = nullptr;  // a dict key (str or int), or
  size_t index = 0;           // an item's index

  std::string Render() const {
    std::string out = parent != nullptr ? parent->Render() : std::string(root);
    if (parent == nullptr) return out;
    if (key == nullptr) return out + "[" + std::to_string(index) + "]";
    if (key->type == msgpack::type::STR) return out + "[\"" + std::string(key->via.str.ptr, key->via.str.size) + "\"]";
    if (key->type == msgpack::type::NEGATIVE_INTEGER) return out + "[" + std::to_string(key->via.i64) + "]";
    return out + "[" + std::to_string(key->via.u64) + "]";
  }
};

// A node's own problem, prefixed with where it is.
inline Status TreeError(Code code, const TreePath& at, const std::string& what) {
  return Status(code, at.Render() + ": " + what);
}

// Reader requirements (R::Value is what it builds for a node):
//   Status Enter(const TreePath&)                       every node, before anything else
//   Result<Value> Leaf(std::string_view kind, const msgpack::object& val, const TreePath&)
//       "tensor" or "input"; the reader says which it takes
//   Result<Value> Scalar(const msgpack::object& val, const TreePath&)   a "value" node
//   Result<Value> Float(double, const TreePath&)
//   Result<Value> Sequence(bool tuple, std::vector<Value> items, const TreePath&)
//   Result<Value> NamedTuple(std::string name, std::vector<std::string> fields, std::vector<Value> items, const TreePath&)
//   Result<Value> Dict(std::vector<std::pair<const msgpack::object*, Value>> entries, const TreePath&)
// `code` is the code of the walker's own errors (malformed nodes, too deep): BAD_REQUEST for
// what a client sent, INTERNAL for what shoald or a worker sent.
template <typename Reader>
Result<typename Reader::Value> WalkTree(const msgpack::object& node, Reader& r, const TreePath& at, int depth,
                                        int max_depth, Code code) {
  using Value = typename Reader::Value;
  if (depth > max_depth) {
    return TreeError(code, at, "nested more than " + std::to_string(max_depth) + " levels deep");
  }
  if (auto st = r.Enter(at); !st.ok()) return st;
  if (node.type != msgpack::type::MAP || node.via.map.size != 1 || node.via.map.ptr[0].key.type != msgpack::type::STR) {
    return TreeError(code, at, "a node must be a map with one key naming its kind");
  }
  const auto& kv = node.via.map.ptr[0];
  std::string_view kind(kv.key.via.str.ptr, kv.key.via.str.size);
  const msgpack::object& val = kv.val;
  if (kind == "tensor" || kind == "input") return r.Leaf(kind, val, at);
  if (kind == "value") {
    switch (val.type) {
      case msgpack::type::NIL:
      case msgpack::type::BOOLEAN:
      case msgpack::type::POSITIVE_INTEGER:
      case msgpack::type::NEGATIVE_INTEGER:
      case msgpack::type::STR: return r.Scalar(val, at);
      default: return TreeError(code, at, "a \"value\" is nil, bool, int or str");
    }
  }
  if (kind == "float") {
    switch (val.type) {
      case msgpack::type::FLOAT32:
      case msgpack::type::FLOAT64: return r.Float(val.via.f64, at);
      case msgpack::type::POSITIVE_INTEGER: return r.Float(static_cast<double>(val.via.u64), at);
      case msgpack::type::NEGATIVE_INTEGER: return r.Float(static_cast<double>(val.via.i64), at);
      default: return TreeError(code, at, "a \"float\" is a number");
    }
  }
  bool known = kind == "tuple" || kind == "list" || kind == "dict" || kind == "namedtuple";
  if (!known) {
    return TreeError(code, at,
                     "unknown node kind \"" + std::string(kind) +
                         "\" (tensor, input, tuple, list, dict, namedtuple, float or value)");
  }
  if (val.type != msgpack::type::ARRAY) return TreeError(code, at, "a \"" + std::string(kind) + "\" holds an array");
  const auto& arr = val.via.array;
  auto items = [&](const msgpack::object_array& a) -> Result<std::vector<Value>> {
    std::vector<Value> out;
    out.reserve(a.size);
    for (uint32_t i = 0; i < a.size; ++i) {
      TreePath child{&at, {}, nullptr, i};
      auto item = WalkTree(a.ptr[i], r, child, depth + 1, max_depth, code);
      if (!item.ok()) return item.status();
      out.push_back(std::move(*item));
    }
    return out;
  };
  if (kind == "tuple" || kind == "list") {
    auto v = items(arr);
    if (!v.ok()) return v.status();
    return r.Sequence(kind == "tuple", std::move(*v), at);
  }
  if (kind == "namedtuple") {  // [name, [field, ...], [node, ...]]
    if (arr.size != 3 || arr.ptr[0].type != msgpack::type::STR || arr.ptr[1].type != msgpack::type::ARRAY ||
        arr.ptr[2].type != msgpack::type::ARRAY || arr.ptr[1].via.array.size != arr.ptr[2].via.array.size) {
      return TreeError(code, at, "a \"namedtuple\" is [name, [field, ...], [node, ...]] with a field per node");
    }
    std::vector<std::string> fields;
    for (uint32_t i = 0; i < arr.ptr[1].via.array.size; ++i) {
      const auto& f = arr.ptr[1].via.array.ptr[i];
      if (f.type != msgpack::type::STR) return TreeError(code, at, "a named tuple's field names are str");
      fields.emplace_back(f.via.str.ptr, f.via.str.size);
    }
    auto v = items(arr.ptr[2].via.array);
    if (!v.ok()) return v.status();
    return r.NamedTuple(std::string(arr.ptr[0].via.str.ptr, arr.ptr[0].via.str.size), std::move(fields),
                        std::move(*v), at);
  }
  // dict: [[key, node], ...], keys all str or all int
  std::vector<std::pair<const msgpack::object*, Value>> entries;
  entries.reserve(arr.size);
  for (uint32_t i = 0; i < arr.size; ++i) {
    const auto& pair = arr.ptr[i];
    if (pair.type != msgpack::type::ARRAY || pair.via.array.size != 2) {
      return TreeError(code, at, "a \"dict\" holds [key, node] pairs");
    }
    const msgpack::object* key = &pair.via.array.ptr[0];
    bool str = key->type == msgpack::type::STR;
    bool integer = key->type == msgpack::type::POSITIVE_INTEGER || key->type == msgpack::type::NEGATIVE_INTEGER;
    if (!str && !integer) return TreeError(code, at, "dict keys are str or int");
    if (i > 0 && str != (entries.front().first->type == msgpack::type::STR)) {
      return TreeError(code, at, "a dict's keys are all str or all int");
    }
    TreePath child{&at, {}, key, i};
    auto v = WalkTree(pair.via.array.ptr[1], r, child, depth + 1, max_depth, code);
    if (!v.ok()) return v.status();
    entries.emplace_back(key, std::move(*v));
  }
  return r.Dict(std::move(entries), at);
}

}  // namespace shoal
