// The KServe v2 codec alone (http/kserve_codec.h): requests -> the model's call, results ->
// responses, with the spec's forms and the errors a client can make.
#include <nlohmann/json.hpp>

#include "http/kserve_codec.h"
#include "tests/cpp/catch.h"

using namespace shoal;
using json = nlohmann::json;

namespace {

V2Alloc Plain() {
  return [](at::IntArrayRef shape, at::ScalarType dtype) -> Result<torch::Tensor> {
    return torch::empty(shape, torch::TensorOptions().dtype(dtype));
  };
}

Result<V2Request> Parse(const json& doc) { return ParseV2Request(doc.dump(), std::nullopt, Plain()); }

}  // namespace

TEST_CASE("v2 datatypes map to shoal's dtypes and back; ones shoal cannot carry have none", "[kserve]") {
  CHECK(ScalarTypeOfV2("FP32") == at::kFloat);
  CHECK(ScalarTypeOfV2("BF16") == at::kBFloat16);
  CHECK(ScalarTypeOfV2("UINT8") == at::kByte);
  CHECK(!ScalarTypeOfV2("UINT32"));
  CHECK(!ScalarTypeOfV2("BYTES"));
  CHECK(V2DataType(at::kLong) == "INT64");
  CHECK(V2DataType(at::kBool) == "BOOL");
  CHECK(V2DataType(at::kComplexFloat).empty());
}

TEST_CASE("inputs become positional arguments (NAME__N) and keywords (other names)", "[kserve]") {
  auto req = Parse({{"id", "7"},
                    {"inputs",
                     {{{"name", "x__1"}, {"shape", {2}}, {"datatype", "INT32"}, {"data", {3, 4}}},
                      {{"name", "x__0"}, {"shape", {1, 2}}, {"datatype", "FP16"}, {"data", {{0.5, 1.5}}}},
                      {{"name", "attention_mask"}, {"shape", {2}}, {"datatype", "BOOL"}, {"data", {true, false}}},
                      {{"name", "text"}, {"shape", {1}}, {"datatype", "BYTES"}, {"data", {"hi"}}}}}});
  REQUIRE(req.ok());
  CHECK(req->id == "7");
  REQUIRE(req->args.size() == 2);
  CHECK(req->args[0].toTensor().scalar_type() == at::kHalf);
  CHECK(torch::equal(req->args[0].toTensor(), torch::tensor({{0.5, 1.5}}).to(at::kHalf)));
  CHECK(torch::equal(req->args[1].toTensor(), torch::tensor({3, 4}, at::kInt)));
  CHECK(torch::equal(req->kwargs.at("attention_mask").toTensor(), torch::tensor({true, false})));
  CHECK(req->kwargs.at("text").toStringRef() == "hi");
}

TEST_CASE("binary inputs are read in order after the JSON header", "[kserve]") {
  json doc = {{"inputs",
               {{{"name", "a"}, {"shape", {2}}, {"datatype", "FP32"}, {"parameters", {{"binary_data_size", 8}}}},
                {{"name", "b"}, {"shape", {1}}, {"datatype", "INT64"}, {"parameters", {{"binary_data_size", 8}}}}}}};
  std::string header = doc.dump();
  float a[2] = {1.5f, -2.0f};
  int64_t b = 42;
  std::string body = header + std::string(reinterpret_cast<char*>(a), 8) + std::string(reinterpret_cast<char*>(&b), 8);
  auto req = ParseV2Request(body, header.size(), Plain());
  REQUIRE(req.ok());
  CHECK(torch::equal(req->kwargs.at("a").toTensor(), torch::tensor({1.5f, -2.0f})));
  CHECK(req->kwargs.at("b").toTensor().item<int64_t>() == 42);
  // One byte short, and one byte over.
  CHECK(ParseV2Request(body.substr(0, body.size() - 1), header.size(), Plain()).status().message().find(
            "only 7 bytes of binary data are left") != std::string::npos);
  CHECK(ParseV2Request(body + "x", header.size(), Plain()).status().message().find(
            "1 bytes of binary data follow") != std::string::npos);
}

TEST_CASE("bad requests say what is wrong and where", "[kserve]") {
  auto message = [](const json& doc) { return Parse(doc).status().message(); };
  CHECK(ParseV2Request("[1", std::nullopt, Plain()).status().code() == Code::kBadRequest);
  CHECK(message({{"inputs", {{{"name", "m"}, {"shape", {2}}, {"datatype", "FP32"}, {"data", {1}}}}}}) ==
        "inputs[0] ('m'): \"data\" holds 1 elements; the shape holds 2");
  CHECK(message({{"inputs", {{{"name", "m"}, {"shape", {1}}, {"datatype", "UINT32"}, {"data", {1}}}}}}).find(
            "'UINT32' is not one shoal carries") != std::string::npos);
  CHECK(message({{"inputs", {{{"name", "m"}, {"shape", {1}}, {"datatype", "FP32"}}}}}).find("needs \"data\"") !=
        std::string::npos);
  json deep = 1;
  for (int i = 0; i < 40; ++i) deep = json::array({deep});
  CHECK(message({{"inputs", {{{"name", "m"}, {"shape", {1}}, {"datatype", "FP32"}, {"data", deep}}}}}).find(
            "deeper than") != std::string::npos);
  CHECK(message({{"inputs", {{{"name", "m"}, {"shape", {1 << 20, 1 << 20, 1 << 20}}, {"datatype", "FP32"},
                              {"data", {1}}}}}})
            .find("more than 2^40 elements") != std::string::npos);
}

TEST_CASE("results become named v2 outputs, JSON or binary, and nested ones are refused", "[kserve]") {
  auto req = Parse({{"id", "x"}, {"inputs", json::array()}});
  REQUIRE(req.ok());
  auto one = EncodeV2Response("m", "", *req, torch::tensor({1.0f, 2.0f}));
  REQUIRE(one.ok());
  CHECK(!one->header_length);
  auto doc = json::parse(one->body);
  CHECK(doc["id"] == "x");
  CHECK(doc["outputs"][0] == json({{"name", "output__0"}, {"datatype", "FP32"}, {"shape", {2}}, {"data", {1.0, 2.0}}}));

  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("logits", torch::tensor({3}, at::kLong));
  d.insert("label", std::string("cat"));
  req->binary["logits"] = true;
  auto both = EncodeV2Response("m", "2", *req, d);
  REQUIRE(both.ok());
  REQUIRE(both->header_length);
  auto head = json::parse(both->body.substr(0, *both->header_length));
  CHECK(head["model_version"] == "2");
  CHECK(head["outputs"][0]["parameters"]["binary_data_size"] == 8);
  CHECK(head["outputs"][1] == json({{"name", "label"}, {"datatype", "BYTES"}, {"shape", {1}}, {"data", {"cat"}}}));
  int64_t v = 0;
  std::memcpy(&v, both->body.data() + *both->header_length, 8);
  CHECK(v == 3);

  req->outputs = std::vector<std::string>{"nope"};
  CHECK(EncodeV2Response("m", "", *req, d).status().message() == "model 'm' has no output 'nope' (it has: logits, label)");
  req->outputs.reset();
  auto nested = c10::ivalue::Tuple::create({torch::ones(1), c10::ivalue::Tuple::create({torch::ones(1)})});
  auto refused = EncodeV2Response("m", "", *req, nested);
  CHECK(refused.status().code() == Code::kInternal);
  CHECK(refused.status().message().find("'output__1'") != std::string::npos);
  CHECK(!EncodeV2Response("m", "", *req, torch::ones(1, at::kComplexFloat)).ok());
}

TEST_CASE("a list of strings is one BYTES [N] output, JSON or binary", "[kserve]") {
  auto req = Parse({{"inputs", json::array()}});
  REQUIRE(req.ok());
  c10::List<std::string> labels({"cat", "", "dog"});
  auto top = EncodeV2Response("m", "", *req, labels);
  REQUIRE(top.ok());
  auto doc = json::parse(top->body);
  REQUIRE(doc["outputs"].size() == 1);
  CHECK(doc["outputs"][0] ==
        json({{"name", "output__0"}, {"datatype", "BYTES"}, {"shape", {3}}, {"data", {"cat", "", "dog"}}}));

  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("scores", torch::tensor({0.5f}));
  d.insert("labels", labels);
  req->binary_default = true;
  auto binary = EncodeV2Response("m", "", *req, d);
  REQUIRE(binary.ok());
  REQUIRE(binary->header_length);
  auto head = json::parse(binary->body.substr(0, *binary->header_length));
  CHECK(head["outputs"][1]["shape"] == json({3}));
  CHECK(head["outputs"][1]["parameters"]["binary_data_size"] == 3 * 4 + 6);
  // After the scores' 4 bytes: each label as its 4-byte little-endian length, then its bytes.
  std::string data = binary->body.substr(*binary->header_length + 4);
  CHECK(data == std::string("\x03\x00\x00\x00" "cat" "\x00\x00\x00\x00" "\x03\x00\x00\x00" "dog", 18));

  // A list of tensors is still one output per element.
  c10::List<at::Tensor> tensors({torch::ones(1), torch::zeros(1)});
  auto two = EncodeV2Response("m", "", *req, tensors);
  REQUIRE(two.ok());
  CHECK(json::parse(two->body.substr(0, *two->header_length))["outputs"].size() == 2);
}
