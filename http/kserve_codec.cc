// KServe v2 bodies <-> shoal's call (http/kserve_codec.h).
#include "http/kserve_codec.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <limits>
#include <optional>
#include <set>

#include "protocol/call_tree.h"  // kMaxCallStringBytes, kMaxCallNodes: what shoald takes in a call
#include "protocol/descriptor.h"
#include "protocol/utf8.h"
#include "tensors/tree.h"

namespace shoal {

using json = nlohmann::json;

namespace {

// v2 datatype <-> shoal dtype name (protocol/dtypes.h). UINT16/32/64 have no torch dtype
// shoal carries; complex64/128 have no v2 datatype.
constexpr std::pair<std::string_view, std::string_view> kV2Types[] = {
    {"BOOL", "bool"},   {"UINT8", "uint8"}, {"INT8", "int8"},    {"INT16", "int16"}, {"INT32", "int32"},
    {"INT64", "int64"}, {"FP16", "float16"}, {"BF16", "bfloat16"}, {"FP32", "float32"}, {"FP64", "float64"},
};

constexpr size_t kMaxNameBytes = 256;
constexpr size_t kMaxInputs = 256;
constexpr size_t kMaxJsonBytes = 16u << 20;  // the JSON part; big tensors go as binary data
constexpr int kMaxNesting = 32;  // of a JSON tensor's "data" arrays

Status Bad(const std::string& where, const std::string& what) { return Status::BadRequest(where + ": " + what); }

std::string Where(size_t i, const std::string& name) {
  return "inputs[" + std::to_string(i) + "]" + (name.empty() ? "" : " ('" + name + "')");
}

// Appends the scalars of `data` (a flat or nested array, row-major) to `out`.
Status Flatten(const json& data, int depth, std::vector<const json*>* out) {
  if (!data.is_array()) {
    out->push_back(&data);
    return Status::Ok();
  }
  if (depth > kMaxNesting) return Status::BadRequest("\"data\" is nested deeper than " + std::to_string(kMaxNesting));
  for (const auto& e : data) {
    if (auto st = Flatten(e, depth + 1, out); !st.ok()) return st;
  }
  return Status::Ok();
}

// "NAME__N" -> N (Triton's PyTorch convention for positional arguments).
std::optional<size_t> PositionOf(const std::string& name) {
  auto at = name.rfind("__");
  if (at == std::string::npos || at == 0 || at + 2 == name.size() || name.size() - at > 6) return std::nullopt;
  size_t n = 0;
  for (size_t i = at + 2; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    n = n * 10 + static_cast<size_t>(name[i] - '0');
  }
  return n;
}

Result<int64_t> IntegerOf(const json& j, const std::string& datatype);

// Fills `t` (contiguous, on the CPU) from JSON scalars.
Status FillFromJson(const std::vector<const json*>& items, const std::string& datatype, torch::Tensor* t) {
  const auto n = static_cast<int64_t>(items.size());
  if (datatype == "BOOL") {
    auto* p = t->data_ptr<bool>();
    for (int64_t i = 0; i < n; ++i) {
      if (!items[i]->is_boolean()) return Status::BadRequest("BOOL data must be true or false");
      p[i] = items[i]->get<bool>();
    }
    return Status::Ok();
  }
  bool integral = datatype.rfind("INT", 0) == 0 || datatype == "UINT8";
  if (integral) {
    std::vector<int64_t> v(n);
    for (int64_t i = 0; i < n; ++i) {
      auto x = IntegerOf(*items[i], datatype);
      if (!x.ok()) return x.status();
      v[i] = *x;
    }
    t->copy_(torch::from_blob(v.data(), {n}, at::kLong).view(t->sizes()));
    return Status::Ok();
  }
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) {
    if (!items[i]->is_number()) return Status::BadRequest(datatype + " data must be numbers");
    v[i] = items[i]->get<double>();
  }
  t->copy_(torch::from_blob(v.data(), {n}, at::kDouble).view(t->sizes()));
  return Status::Ok();
}

// BYTES: JSON strings, or binary elements each prefixed by its 4-byte little-endian length.
Result<std::vector<std::string>> ReadBytes(const std::vector<const json*>* items, std::string_view binary,
                                           size_t count) {
  std::vector<std::string> out;
  if (items != nullptr) {
    for (const json* j : *items) {
      if (!j->is_string()) return Status::BadRequest("BYTES data must be strings");
      out.push_back(j->get<std::string>());
    }
  } else {
    size_t at = 0;
    while (at < binary.size()) {
      if (binary.size() - at < 4) return Status::BadRequest("BYTES binary data ends inside an element's length");
      uint32_t len = static_cast<uint8_t>(binary[at]) | static_cast<uint8_t>(binary[at + 1]) << 8 |
                     static_cast<uint8_t>(binary[at + 2]) << 16 | static_cast<uint32_t>(static_cast<uint8_t>(binary[at + 3])) << 24;
      at += 4;
      if (binary.size() - at < len) return Status::BadRequest("BYTES binary data ends inside an element");
      out.emplace_back(binary.substr(at, len));
      at += len;
      // JSON strings were checked by the parser; these bytes reach the model as a str too.
      if (auto bad = FirstNonUtf8(out.back())) {
        return Status::BadRequest("BYTES element " + std::to_string(out.size() - 1) + " is not UTF-8 text (byte " +
                                  std::to_string(*bad) + "); shoal passes BYTES to the model as str: send raw "
                                  "bytes as a UINT8 tensor");
      }
    }
  }
  if (out.size() != count) {
    return Status::BadRequest("BYTES holds " + std::to_string(out.size()) + " elements, its shape " +
                              std::to_string(count));
  }
  // shoald would refuse it too (protocol/call_tree.h), in the call's terms; here the answer
  // can say what to send instead.
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i].size() > kMaxCallStringBytes) {
      return Status::BadRequest("BYTES element " + std::to_string(i) + " is " + std::to_string(out[i].size()) +
                                " bytes, more than the " + std::to_string(kMaxCallStringBytes) +
                                " a str in shoal's call may hold; send large data as a UINT8 tensor");
    }
  }
  return out;
}

// Whether `text` nests arrays and objects at most `limit` deep (strings skipped). Checked
// before parsing: a parse of 8 MiB of "[" takes a gigabyte.
bool NestsAtMost(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// An integer of `datatype` from JSON, range-checked.
Result<int64_t> IntegerOf(const json& j, const std::string& datatype) {
  if (!j.is_number_integer()) return Status::BadRequest(datatype + " data must be integers");
  if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Status::BadRequest(datatype + " data holds " + j.dump() + ", out of range");
  }
  int64_t v = j.get<int64_t>();
  std::pair<int64_t, int64_t> range = {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()};
  if (datatype == "UINT8") range = {0, 255};
  if (datatype == "INT8") range = {-128, 127};
  if (datatype == "INT16") range = {-32768, 32767};
  if (datatype == "INT32") range = {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()};
  if (v < range.first || v > range.second) {
    return Status::BadRequest(datatype + " data holds " + std::to_string(v) + ", out of its range");
  }
  return v;
}

}  // namespace

std::optional<at::ScalarType> ScalarTypeOfV2(std::string_view datatype) {
  for (const auto& [v2, ours] : kV2Types) {
    if (v2 == datatype) return ScalarTypeOf(ours);
  }
  return std::nullopt;
}

std::string V2DataType(at::ScalarType t) {
  std::string ours = DTypeName(t);
  for (const auto& [v2, name] : kV2Types) {
    if (name == ours) return std::string(v2);
  }
  return {};
}

std::string V2Error(const std::string& message) {
  return json{{"error", message}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<V2Request> ParseV2Request(std::string_view body, std::optional<size_t> header_length, const V2Alloc& alloc) {
  size_t json_size = body.size();
  if (header_length) {
    if (*header_length > body.size()) {
      return Status::BadRequest("Inference-Header-Content-Length is " + std::to_string(*header_length) +
                                " but the body has " + std::to_string(body.size()) + " bytes");
    }
    json_size = *header_length;
  }
  if (json_size > kMaxJsonBytes) {
    return Status::BadRequest("the JSON part is " + std::to_string(json_size) + " bytes, more than " +
                              std::to_string(kMaxJsonBytes) + "; send big tensors as binary data (binary_data_size)");
  }
  if (!NestsAtMost(body.substr(0, json_size), kMaxNesting + 8)) {
    return Status::BadRequest("the request's JSON nests deeper than " + std::to_string(kMaxNesting + 8));
  }
  json doc;
  try {
    doc = json::parse(body.substr(0, json_size));
  } catch (const json::exception& e) {
    return Status::BadRequest(std::string("the request is not JSON: ") + e.what());
  }
  if (!doc.is_object()) return Status::BadRequest("the request must be a JSON object with \"inputs\"");
  V2Request req;
  if (auto it = doc.find("id"); it != doc.end()) {
    if (!it->is_string()) return Status::BadRequest("\"id\" must be a string");
    req.id = it->get<std::string>();
  }
  if (auto it = doc.find("parameters"); it != doc.end()) {
    if (!it->is_object()) return Status::BadRequest("\"parameters\" must be an object");
    if (auto b = it->find("binary_data_output"); b != it->end()) {
      if (!b->is_boolean()) return Status::BadRequest("parameters.binary_data_output must be true or false");
      req.binary_default = b->get<bool>();
    }
    if (auto t = it->find("timeout"); t != it->end()) {  // Triton's: microseconds
      if (!t->is_number_unsigned() || t->get<uint64_t>() > (uint64_t{1} << 40)) {
        return Status::BadRequest("parameters.timeout must be microseconds, an integer >= 0");
      }
      uint64_t us = t->get<uint64_t>();
      if (us > 0) req.timeout_ms = static_cast<int64_t>((us + 999) / 1000);
    }
  }
  auto inputs = doc.find("inputs");
  if (inputs == doc.end() || !inputs->is_array()) return Status::BadRequest("the request needs \"inputs\": [...]");
  if (inputs->size() > kMaxInputs) return Status::BadRequest("more than " + std::to_string(kMaxInputs) + " inputs");
  std::string_view binary = body.substr(json_size);
  size_t binary_at = 0;
  std::set<std::string> names;
  std::map<size_t, c10::IValue> positional;
  size_t nodes = 0;  // of the call shoald gets: one per input, and one more per string of a BYTES list
  for (size_t i = 0; i < inputs->size(); ++i) {
    const json& in = (*inputs)[i];
    if (!in.is_object()) return Bad(Where(i, ""), "each input must be an object");
    auto name_it = in.find("name");
    if (name_it == in.end() || !name_it->is_string() || name_it->get<std::string>().empty()) {
      return Bad(Where(i, ""), "\"name\" must be a non-empty string");
    }
    std::string name = name_it->get<std::string>();
    std::string where = Where(i, name.size() > kMaxNameBytes ? name.substr(0, 32) + "..." : name);
    if (name.size() > kMaxNameBytes) return Bad(where, "a name is at most " + std::to_string(kMaxNameBytes) + " bytes");
    if (!names.insert(name).second) return Bad(where, "two inputs have this name");
    auto dt_it = in.find("datatype");
    if (dt_it == in.end() || !dt_it->is_string()) return Bad(where, "\"datatype\" must be a string (\"FP32\")");
    std::string datatype = dt_it->get<std::string>();
    auto shape_it = in.find("shape");
    if (shape_it == in.end() || !shape_it->is_array()) return Bad(where, "\"shape\" must be an array of sizes");
    if (shape_it->size() > kMaxDims) return Bad(where, "more than " + std::to_string(kMaxDims) + " dimensions");
    std::vector<int64_t> shape;
    uint64_t count = 1;
    for (const auto& d : *shape_it) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return Bad(where, "shape sizes must be integers >= 0");
      uint64_t n = d.get<uint64_t>();
      if (n > (uint64_t{1} << 40) || (n != 0 && count > (uint64_t{1} << 40) / n)) {
        return Bad(where, "the shape holds more than 2^40 elements");
      }
      count *= n;
      shape.push_back(static_cast<int64_t>(n));
    }
    std::optional<size_t> binary_size;
    if (auto p = in.find("parameters"); p != in.end()) {
      if (!p->is_object()) return Bad(where, "\"parameters\" must be an object");
      if (auto b = p->find("binary_data_size"); b != p->end()) {
        if (!b->is_number_unsigned()) return Bad(where, "parameters.binary_data_size must be an integer >= 0");
        binary_size = b->get<size_t>();
      }
    }
    auto data_it = in.find("data");
    if (binary_size && data_it != in.end()) return Bad(where, "has both \"data\" and binary_data_size");
    if (!binary_size && data_it == in.end()) return Bad(where, "needs \"data\" (or binary data: binary_data_size)");
    std::string_view bytes;
    if (binary_size) {
      if (binary.size() - binary_at < *binary_size) {
        return Bad(where, "binary_data_size is " + std::to_string(*binary_size) + " but only " +
                              std::to_string(binary.size() - binary_at) + " bytes of binary data are left");
      }
      bytes = binary.substr(binary_at, *binary_size);
      binary_at += *binary_size;
    }
    std::vector<const json*> items;
    if (data_it != in.end()) {
      if (auto st = Flatten(*data_it, 0, &items); !st.ok()) return Bad(where, st.message());
    }
    c10::IValue value;
    if (datatype == "BYTES") {
      auto strings = ReadBytes(binary_size ? nullptr : &items, bytes, count);
      if (!strings.ok()) return Bad(where, strings.status().message());
      nodes += count == 1 ? 1 : 1 + count;
      if (nodes > kMaxCallNodes) {
        return Bad(where, "its " + std::to_string(count) + " elements take the request past the " +
                              std::to_string(kMaxCallNodes) + " items a call to shoald holds (a BYTES input of N > 1 " +
                              "elements is N + 1, any other input 1); send large data as a UINT8 tensor");
      }
      if (count == 1) {  // [], [1], [1, 1]: one str
        value = (*strings)[0];
      } else {  // any other shape: its strings in row-major order, one list
        c10::List<std::string> list;
        for (auto& s : *strings) list.push_back(std::move(s));
        value = list;
      }
    } else {
      ++nodes;
      auto type = ScalarTypeOfV2(datatype);
      if (!type) {
        return Bad(where, "datatype '" + datatype + "' is not one shoal carries (BOOL, UINT8, INT8, INT16, INT32, "
                          "INT64, FP16, BF16, FP32, FP64, BYTES)");
      }
      size_t element = c10::elementSize(*type);
      if (binary_size && *binary_size != count * element) {
        return Bad(where, "binary_data_size is " + std::to_string(*binary_size) + " bytes; shape and " + datatype +
                              " make " + std::to_string(count * element));
      }
      if (!binary_size && items.size() != count) {
        return Bad(where, "\"data\" holds " + std::to_string(items.size()) + " elements; the shape holds " +
                              std::to_string(count));
      }
      auto t = alloc(shape, *type);
      if (!t.ok()) return t.status();
      if (binary_size) {
        if (*type == at::kBool) {
          for (char c : bytes) {
            if (c != 0 && c != 1) return Bad(where, "BOOL binary data must be bytes 0 or 1");
          }
        }
        if (count != 0) std::memcpy(t->data_ptr(), bytes.data(), bytes.size());
      } else if (auto st = FillFromJson(items, datatype, &*t); !st.ok()) {
        return Bad(where, st.message());
      }
      value = *t;
    }
    if (auto n = PositionOf(name)) {
      if (!positional.emplace(*n, std::move(value)).second) {
        return Bad(where, "positional argument " + std::to_string(*n) + " is given twice");
      }
    } else {
      req.kwargs[name] = std::move(value);
    }
  }
  if (binary_at != binary.size()) {
    return Status::BadRequest(std::to_string(binary.size() - binary_at) +
                              " bytes of binary data follow the header that no input's binary_data_size claims");
  }
  for (auto& [n, value] : positional) {
    if (n != req.args.size()) {
      return Status::BadRequest("positional inputs (NAME__N) must be numbered 0, 1, ... without gaps: __" +
                                std::to_string(req.args.size()) + " is missing");
    }
    req.args.push_back(std::move(value));
  }
  if (auto outs = doc.find("outputs"); outs != doc.end()) {
    if (!outs->is_array()) return Status::BadRequest("\"outputs\" must be an array");
    // An empty list names no output: every one is sent, as without "outputs" (Triton too).
    if (!outs->empty()) req.outputs.emplace();
    std::set<std::string> asked;
    for (size_t i = 0; i < outs->size(); ++i) {
      const json& o = (*outs)[i];
      std::string where = "outputs[" + std::to_string(i) + "]";
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) {
        return Bad(where, "each output must be an object with a \"name\"");
      }
      std::string name = o["name"].get<std::string>();
      // Asked twice, an output would come back twice under one name; Triton refuses it too.
      if (!asked.insert(name).second) return Bad(where, "'" + name + "' is asked for twice; name each output once");
      req.outputs->push_back(name);
      if (auto p = o.find("parameters"); p != o.end() && p->is_object()) {
        if (auto b = p->find("binary_data"); b != p->end()) {
          if (!b->is_boolean()) return Bad(where, "parameters.binary_data must be true or false");
          req.binary[name] = b->get<bool>();
        }
      }
    }
  }
  return req;
}

namespace {

std::string OutputName(size_t i) { return "output__" + std::to_string(i); }

// A string is BYTES [1], a non-empty list of strings BYTES [N]; nullopt for anything else.
std::optional<std::vector<std::string>> Strings(const c10::IValue& v) {
  if (v.isString()) return std::vector<std::string>{v.toStringRef()};
  if (!v.isList() || v.toListRef().empty()) return std::nullopt;
  std::vector<std::string> out;
  for (const auto& e : v.toListRef()) {
    if (!e.isString()) return std::nullopt;
    out.push_back(e.toStringRef());
  }
  return out;
}

// The named results of a model's output; INTERNAL when it nests deeper.
Result<std::vector<std::pair<std::string, c10::IValue>>> NamedOutputs(const c10::IValue& out) {
  std::vector<std::pair<std::string, c10::IValue>> named;
  if (out.isTuple()) {
    auto tt = out.type()->cast<c10::TupleType>();
    const auto& items = out.toTupleRef().elements();
    bool has_names = tt && tt->schema();
    for (size_t i = 0; i < items.size(); ++i) {
      named.emplace_back(has_names ? tt->schema()->arguments()[i].name() : OutputName(i), items[i]);
    }
  } else if (out.isList() && !Strings(out)) {  // a list of strings is one BYTES output
    auto list = out.toList();
    for (size_t i = 0; i < list.size(); ++i) named.emplace_back(OutputName(i), list.get(i));
  } else if (out.isGenericDict()) {
    for (const auto& e : out.toGenericDict()) {
      const auto& k = e.key();
      named.emplace_back(k.isString() ? k.toStringRef() : k.isInt() ? std::to_string(k.toInt()) : "?", e.value());
    }
  } else {
    named.emplace_back(OutputName(0), out);
  }
  for (const auto& [name, v] : named) {
    if (!(v.isTensor() || v.isDouble() || v.isInt() || v.isBool() || Strings(v))) {
      return Status(Code::kInternal, "the model's result holds '" + name + "', a " + v.tagKind() +
                                         ", which is no v2 tensor (results are a tensor, or a tuple, list or dict of "
                                         "tensors, scalars, strings and lists of strings); call it over shoal's own "
                                         "protocol instead");
    }
  }
  return named;
}

}  // namespace

Result<V2Response> EncodeV2Response(const std::string& model, const std::string& version, const V2Request& request,
                                    const c10::IValue& out) {
  auto named = NamedOutputs(out);
  if (!named.ok()) return named.status();
  std::vector<std::pair<std::string, c10::IValue>> chosen;
  if (request.outputs) {
    for (const auto& want : *request.outputs) {
      auto it = std::find_if(named->begin(), named->end(), [&](const auto& p) { return p.first == want; });
      if (it == named->end()) {
        std::string have;
        for (const auto& [name, v] : *named) have += (have.empty() ? "" : ", ") + name;
        return Status::BadRequest("model '" + model + "' has no output '" + want + "' (it has: " + have + ")");
      }
      chosen.push_back(*it);
    }
  } else {
    chosen = std::move(*named);
  }
  json doc;
  doc["model_name"] = model;
  if (!version.empty()) doc["model_version"] = version;
  if (!request.id.empty()) doc["id"] = request.id;
  json outputs = json::array();
  // The binary data in output order, written once into the body after the JSON; `keep`
  // holds what the pointers point into.
  std::vector<std::pair<const void*, size_t>> binary;
  std::vector<torch::Tensor> keep;
  std::vector<std::string> bytes_kept;
  bytes_kept.reserve(chosen.size());
  size_t binary_bytes = 0;
  bool any_binary = false;
  for (const auto& [name, v] : chosen) {
    auto b = request.binary.find(name);
    bool as_binary = b != request.binary.end() ? b->second : request.binary_default;
    json o;
    o["name"] = name;
    if (auto strings = v.isTensor() ? std::nullopt : Strings(v)) {
      o["datatype"] = "BYTES";
      o["shape"] = {strings->size()};
      if (as_binary) {  // each element: its length (4 bytes, little-endian), then its bytes
        std::string elements;
        for (const auto& s : *strings) {
          uint32_t len = static_cast<uint32_t>(s.size());
          elements += {static_cast<char>(len), static_cast<char>(len >> 8), static_cast<char>(len >> 16),
                       static_cast<char>(len >> 24)};
          elements += s;
        }
        o["parameters"]["binary_data_size"] = elements.size();
        bytes_kept.push_back(std::move(elements));
        binary.emplace_back(bytes_kept.back().data(), bytes_kept.back().size());
        binary_bytes += bytes_kept.back().size();
        any_binary = true;
      } else {
        o["data"] = *strings;
      }
      outputs.push_back(std::move(o));
      continue;
    }
    torch::Tensor t = v.isTensor() ? v.toTensor() : v.isDouble() ? torch::scalar_tensor(v.toDouble(), at::kDouble)
                                                   : v.isInt()  ? torch::scalar_tensor(v.toInt(), at::kLong)
                                                                : torch::scalar_tensor(v.toBool(), at::kBool);
    t = t.cpu().resolve_conj().resolve_neg().contiguous();  // its values, not a lazy view's bytes
    std::string datatype = V2DataType(t.scalar_type());
    if (datatype.empty()) {
      return Status(Code::kInternal, "output '" + name + "' is a " + std::string(c10::toString(t.scalar_type())) +
                                         " tensor, which has no v2 datatype");
    }
    o["datatype"] = datatype;
    o["shape"] = t.sizes().vec();
    if (as_binary) {
      size_t n = t.numel() * t.element_size();
      keep.push_back(t);
      if (n != 0) binary.emplace_back(t.data_ptr(), n);
      binary_bytes += n;
      any_binary = true;
      o["parameters"]["binary_data_size"] = n;
    } else if (t.scalar_type() == at::kBool) {
      const bool* p = t.data_ptr<bool>();
      o["data"] = std::vector<bool>(p, p + t.numel());
    } else if (at::isFloatingType(t.scalar_type())) {
      auto d = t.to(at::kDouble);
      const double* p = d.data_ptr<double>();
      o["data"] = std::vector<double>(p, p + d.numel());
    } else {
      auto d = t.to(at::kLong);
      const int64_t* p = d.data_ptr<int64_t>();
      o["data"] = std::vector<int64_t>(p, p + d.numel());
    }
    outputs.push_back(std::move(o));
  }
  doc["outputs"] = std::move(outputs);
  V2Response r;
  std::string header = doc.dump(-1, ' ', false, json::error_handler_t::replace);
  if (!any_binary) {
    r.body = std::move(header);
    return r;
  }
  r.header_length = header.size();
  r.body = std::move(header);
  r.body.reserve(r.body.size() + binary_bytes);
  for (const auto& [data, n] : binary) r.body.append(static_cast<const char*>(data), n);
  return r;
}

}  // namespace shoal
