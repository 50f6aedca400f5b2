#include "tensors/tree.h"

#include <sstream>

#include "protocol/dtypes.h"
#include "protocol/tree_walk.h"

namespace shoal {

namespace {
struct Entry {
  const char* name;
  at::ScalarType type;
};
const Entry kTypes[] = {
#define SHOAL_SCALAR_TYPE(name, size, scalar) {#name, at::ScalarType::scalar},
    SHOAL_DTYPES(SHOAL_SCALAR_TYPE)
#undef SHOAL_SCALAR_TYPE
};

Result<c10::IValue> Scalar(const msgpack::object& v) {
  switch (v.type) {
    case msgpack::type::NIL: return c10::IValue();
    case msgpack::type::BOOLEAN: return c10::IValue(v.via.boolean);
    case msgpack::type::POSITIVE_INTEGER: return c10::IValue(static_cast<int64_t>(v.via.u64));
    case msgpack::type::NEGATIVE_INTEGER: return c10::IValue(v.via.i64);
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return c10::IValue(v.via.f64);
    case msgpack::type::STR: return c10::IValue(std::string(v.via.str.ptr, v.via.str.size));
    default: return Status::Internal("unsupported scalar in output tree");
  }
}
}  // namespace

std::optional<at::ScalarType> ScalarTypeOf(std::string_view dtype) {
  for (const auto& e : kTypes) {
    if (dtype == e.name) return e.type;
  }
  return std::nullopt;
}

std::string DTypeName(at::ScalarType t) {
  for (const auto& e : kTypes) {
    if (t == e.type) return e.name;
  }
  return "";
}

namespace {

// c10::IValues from the tree grammar's nodes (protocol/tree_walk.h). Lists and dict values
// get the type that unifies their items' (a List[Tensor] for tensors, as a TorchScript
// signature says), Any when none does.
class IValueReader {
 public:
  using Value = c10::IValue;
  using LeafFn = std::function<Result<c10::IValue>(const msgpack::object&, const TreePath&)>;
  IValueReader(std::string_view leaf, LeafFn make) : leaf_(leaf), make_(std::move(make)) {}

  Status Enter(const TreePath&) { return Status::Ok(); }
  Result<Value> Leaf(std::string_view kind, const msgpack::object& val, const TreePath& at) {
    if (kind != leaf_) return TreeError(Code::kInternal, at, "unexpected \"" + std::string(kind) + "\" node");
    return make_(val, at);
  }
  Result<Value> Scalar(const msgpack::object& v, const TreePath&) { return shoal::Scalar(v); }
  Result<Value> Float(double d, const TreePath&) { return c10::IValue(d); }
  Result<Value> Sequence(bool tuple, std::vector<Value> items, const TreePath&) {
    if (tuple) return c10::IValue(c10::ivalue::Tuple::create(std::move(items)));
    c10::impl::GenericList list(Unified(items));
    for (auto& it : items) list.push_back(std::move(it));
    return c10::IValue(list);
  }
  Result<Value> NamedTuple(std::string name, std::vector<std::string> fields, std::vector<Value> items,
                           const TreePath&) {
    std::vector<c10::TypePtr> types;
    for (const auto& it : items) types.push_back(it.type());
    auto type = c10::TupleType::createNamed(c10::QualifiedName(name.empty() ? "NamedTuple" : name), fields, types);
    return c10::IValue(c10::ivalue::Tuple::createNamed(std::move(items), std::move(type)));
  }
  Result<Value> Dict(std::vector<std::pair<const msgpack::object*, Value>> entries, const TreePath& at) {
    bool str_keys = entries.empty() || entries.front().first->type == msgpack::type::STR;
    c10::TypePtr key_type = str_keys ? c10::TypePtr(c10::StringType::get()) : c10::TypePtr(c10::IntType::get());
    std::vector<c10::IValue> values;
    for (const auto& e : entries) values.push_back(e.second);
    c10::impl::GenericDict dict(key_type, Unified(values));
    for (auto& e : entries) {
      auto key = shoal::Scalar(*e.first);
      if (!key.ok()) return TreeError(Code::kInternal, at, key.status().message());
      dict.insert(std::move(*key), std::move(e.second));
    }
    return c10::IValue(dict);
  }

 private:
  static c10::TypePtr Unified(const std::vector<c10::IValue>& items) {
    if (items.empty()) return c10::AnyType::get();
    std::vector<c10::TypePtr> types;
    // Without shapes: a list is invariant, and List[Tensor] is what a signature says.
    for (const auto& it : items) types.push_back(c10::unshapedType(it.type()));
    std::stringstream why;
    auto t = c10::unifyTypeList(types, why);
    return t ? *t : c10::TypePtr(c10::AnyType::get());
  }

  std::string_view leaf_;
  LeafFn make_;
};

}  // namespace

Result<c10::IValue> DecodeTree(const msgpack::object& node, const TensorMaker& make) {
  IValueReader reader("tensor", [&](const msgpack::object& val, const TreePath& at) -> Result<c10::IValue> {
    auto d = Descriptor::Parse(val);
    if (!d.ok()) return TreeError(Code::kInternal, at, d.status().message());
    auto t = make(*d);
    if (!t.ok()) return t.status();
    return c10::IValue(std::move(*t));
  });
  TreePath root{nullptr, "output"};
  return WalkTree(node, reader, root, 0, kMaxOutputDepth, Code::kInternal);
}

Result<c10::IValue> DecodeCallNode(const msgpack::object& node, const std::vector<c10::IValue>& inputs,
                                   const TreePath& at) {
  IValueReader reader("input", [&](const msgpack::object& val, const TreePath& where) -> Result<c10::IValue> {
    if (val.type != msgpack::type::POSITIVE_INTEGER || val.via.u64 >= inputs.size()) {
      return TreeError(Code::kInternal, where, "input index out of range");
    }
    return inputs[val.via.u64];
  });
  return WalkTree(node, reader, at, 0, kMaxOutputDepth, Code::kInternal);
}

}  // namespace shoal
