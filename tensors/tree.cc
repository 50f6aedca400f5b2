#include "tensors/tree.h"

#include "protocol/dtypes.h"

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

Result<c10::IValue> DecodeTree(const msgpack::object& node, const TensorMaker& make, int depth) {
  if (depth > kMaxOutputDepth || node.type != msgpack::type::MAP || node.via.map.size != 1 ||
      node.via.map.ptr[0].key.type != msgpack::type::STR) {
    return Status::Internal("malformed output tree");
  }
  const auto& kv = node.via.map.ptr[0];
  std::string_view kind(kv.key.via.str.ptr, kv.key.via.str.size);
  const auto& val = kv.val;
  if (kind == "tensor") {
    auto d = Descriptor::Parse(val);
    if (!d.ok()) return d.status();
    auto t = make(*d);
    if (!t.ok()) return t.status();
    return c10::IValue(std::move(*t));
  }
  if (kind == "value") return Scalar(val);
  if (kind == "float") {
    if (val.type == msgpack::type::POSITIVE_INTEGER) return c10::IValue(static_cast<double>(val.via.u64));
    if (val.type == msgpack::type::NEGATIVE_INTEGER) return c10::IValue(static_cast<double>(val.via.i64));
    return Scalar(val);
  }
  if (val.type != msgpack::type::ARRAY) return Status::Internal("malformed output tree");
  const auto& arr = val.via.array;
  if (kind == "tuple" || kind == "list") {
    std::vector<c10::IValue> items;
    for (uint32_t i = 0; i < arr.size; ++i) {
      auto item = DecodeTree(arr.ptr[i], make, depth + 1);
      if (!item.ok()) return item.status();
      items.push_back(std::move(*item));
    }
    if (kind == "tuple") return c10::IValue(c10::ivalue::Tuple::create(std::move(items)));
    c10::impl::GenericList list(c10::AnyType::get());
    for (auto& it : items) list.push_back(std::move(it));
    return c10::IValue(list);
  }
  if (kind == "namedtuple") {  // [name, [field, ...], [node, ...]]
    if (arr.size != 3 || arr.ptr[0].type != msgpack::type::STR || arr.ptr[1].type != msgpack::type::ARRAY ||
        arr.ptr[2].type != msgpack::type::ARRAY || arr.ptr[1].via.array.size != arr.ptr[2].via.array.size) {
      return Status::Internal("malformed output namedtuple");
    }
    std::vector<std::string> fields;
    std::vector<c10::TypePtr> types;
    std::vector<c10::IValue> items;
    for (uint32_t i = 0; i < arr.ptr[1].via.array.size; ++i) {
      const auto& f = arr.ptr[1].via.array.ptr[i];
      if (f.type != msgpack::type::STR) return Status::Internal("malformed output namedtuple field");
      fields.emplace_back(f.via.str.ptr, f.via.str.size);
      auto item = DecodeTree(arr.ptr[2].via.array.ptr[i], make, depth + 1);
      if (!item.ok()) return item.status();
      types.push_back(item->type());
      items.push_back(std::move(*item));
    }
    std::string name(arr.ptr[0].via.str.ptr, arr.ptr[0].via.str.size);
    auto type = c10::TupleType::createNamed(c10::QualifiedName(name.empty() ? "NamedTuple" : name), fields, types);
    return c10::IValue(c10::ivalue::Tuple::createNamed(std::move(items), std::move(type)));
  }
  if (kind == "dict") {
    bool str_keys = arr.size == 0 || (arr.ptr[0].type == msgpack::type::ARRAY && arr.ptr[0].via.array.size == 2 &&
                                      arr.ptr[0].via.array.ptr[0].type == msgpack::type::STR);
    c10::TypePtr key_type = str_keys ? c10::TypePtr(c10::StringType::get()) : c10::TypePtr(c10::IntType::get());
    c10::impl::GenericDict dict(key_type, c10::AnyType::get());
    for (uint32_t i = 0; i < arr.size; ++i) {
      const auto& pair = arr.ptr[i];
      if (pair.type != msgpack::type::ARRAY || pair.via.array.size != 2) return Status::Internal("malformed dict");
      auto key = Scalar(pair.via.array.ptr[0]);
      auto value = DecodeTree(pair.via.array.ptr[1], make, depth + 1);
      if (!key.ok()) return key.status();
      if (!value.ok()) return value.status();
      if (str_keys != key->isString()) return Status::Internal("output dict mixes str and int keys");
      dict.insert(std::move(*key), std::move(*value));
    }
    return c10::IValue(dict);
  }
  return Status::Internal("unknown output node '" + std::string(kind) + "'");
}

}  // namespace shoal
