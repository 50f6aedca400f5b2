// The manifest keys shoald reads itself (package_format/manifest.h), from JSON as
// shoal.export and torch.jit.save's extra files write it, and from JSON that is not.
#include <string>
#include <vector>

#include "package_format/manifest.h"
#include "package_format/served_object.h"
#include "tests/cpp/catch.h"

using namespace shoal;

TEST_CASE("a manifest lets broadcast inputs through only when it says true", "[manifest]") {
  auto yes = ParseManifestPolicy(R"({"format": 1, "name": "m", "inputs": [{"dtype": "float32", "shape": [null, 3]}],
                                    "example": null, "broadcast_inputs": true, "x": -1.5e-3})");
  REQUIRE(yes.ok());
  CHECK(yes->broadcast_inputs);
  CHECK_FALSE(ParseManifestPolicy(R"({"broadcast_inputs": false})")->broadcast_inputs);
  CHECK_FALSE(ParseManifestPolicy(R"({"format": 1, "version": "2"})")->broadcast_inputs);  // absent: refused
  CHECK_FALSE(ParseManifestPolicy("{}")->broadcast_inputs);
  // a nested key of that name is not the manifest's
  CHECK_FALSE(ParseManifestPolicy(R"({"outputs": {"broadcast_inputs": true}})")->broadcast_inputs);
  // escapes are decoded: this is the same key
  CHECK(ParseManifestPolicy(R"({"broadcast\u005finputs": true})")->broadcast_inputs);
  CHECK(ParseManifestPolicy(" \n{\"s\": \"\\\"\\\\\\/\\b\\f\\n\\r\\t\\ud83d\\ude00\", \"broadcast_inputs\":true}\n")
            ->broadcast_inputs);
}

TEST_CASE("a manifest shoald cannot read is a bad request that says why", "[manifest]") {
  struct Case {
    const char* json;
    const char* why;
  };
  const Case cases[] = {
      {"", "is not a JSON object"},
      {"[1]", "is not a JSON object"},
      {R"({"broadcast_inputs": 1})", "broadcast_inputs must be true or false"},
      {R"({"broadcast_inputs": "true"})", "broadcast_inputs must be true or false"},
      {R"({"broadcast_inputs": true, "broadcast_inputs": false})", "broadcast_inputs is given twice"},
      {R"({"a": 1} x)", "has text after its object"},
      {R"({"a": 01})", "expects ',' or '}' after a value"},
      {R"({"a": 1.})", "has a malformed number"},
      {R"({"a": tru})", "has an unexpected character"},
      {"{\"a\": \"x\ny\"}", "has a control character inside a string"},
      {R"({"a": "\x"})", "has an unknown escape"},
      {R"({"a": "\ud800"})", "has a lone surrogate"},
      {R"({"a": "abc)", "ends inside a string"},
      {R"({"a": [1, 2)", "expects ',' or ']'"},
      {R"({"a" 1})", "expects ':' after a key"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.json);
    auto r = ParseManifestPolicy(c.json);
    REQUIRE(r.status().code() == Code::kBadRequest);
    CHECK(r.status().message().rfind("the manifest", 0) == 0);
    CHECK(r.status().message().find(c.why) != std::string::npos);
  }
  // The archive reader names the record it read.
  CHECK(ParseManifestPolicy("{", "_shoal/manifest.json").status().message().rfind(
            "_shoal/manifest.json does not parse: it ", 0) == 0);
  std::string deep = "{\"a\": " + std::string(40, '[') + std::string(40, ']') + "}";
  CHECK(ParseManifestPolicy(deep).status().message().find("nests deeper than 32 levels") != std::string::npos);
  std::string fine = "{\"a\": " + std::string(31, '[') + std::string(31, ']') + "}";
  CHECK(ParseManifestPolicy(fine).ok());
}

TEST_CASE("the manifest names the quantized engine a TorchScript model runs with", "[manifest]") {
  auto p = ParseManifestPolicy(R"({"format": 1, "quantized_engine": "qnnpack"})");
  REQUIRE(p.ok());
  CHECK(p->quantized_engine == "qnnpack");
  CHECK(ParseManifestPolicy(R"({"format": 1})")->quantized_engine.empty());
  for (const char* bad : {R"({"quantized_engine": 3})", R"({"quantized_engine": ""})",
                          R"({"quantized_engine": "a", "quantized_engine": "b"})"}) {
    CAPTURE(bad);
    CHECK(ParseManifestPolicy(bad).status().code() == Code::kBadRequest);
  }
}

TEST_CASE("a manifest's batching is read, and values shoald cannot follow are refused", "[manifest][batching]") {
  auto p = ParseManifestPolicy(
      R"({"name": "m", "batching": {"max_batch": 8, "max_delay_us": 2000, "preferred_batch_sizes": [4, 8], "note": [1]}})");
  REQUIRE(p.ok());
  CHECK(p->batching.max_batch == 8);
  CHECK(p->batching.max_delay_us == 2000);
  CHECK(p->batching.preferred_batch_sizes == std::vector<uint32_t>{4, 8});
  CHECK(CheckBatchPolicy(p->batching, "model 'm'").ok());
  CHECK_FALSE(ParseManifestPolicy("{}")->batching.on());
  CHECK(ParseManifestPolicy(R"({"batching": {"max_batch": 1.5}})").status().message().find("whole number") !=
        std::string::npos);
  CHECK(ParseManifestPolicy(R"({"batching": {"max_batch": -2}})").status().message().find("whole number") !=
        std::string::npos);
  CHECK_FALSE(ParseManifestPolicy(R"({"batching": 8})").ok());
  CHECK_FALSE(ParseManifestPolicy(R"({"batching": {}, "batching": {}})").ok());
  BatchPolicy bad;
  bad.max_batch = 65;
  CHECK(CheckBatchPolicy(bad, "model 'm'").message() == "model 'm': max_batch 65 is more than 64 jobs per batch");
  bad.max_batch = 0;
  bad.max_delay_us = 10;
  CHECK(CheckBatchPolicy(bad, "model 'm'").message().find("only with max_batch > 1") != std::string::npos);
  bad.max_batch = 4;
  bad.preferred_batch_sizes = {4, 2};
  CHECK(CheckBatchPolicy(bad, "model 'm'").message().find("must ascend") != std::string::npos);
}

TEST_CASE("the manifest names the served pickle and the methods clients may call", "[manifest][served]") {
  auto p = ParseManifestPolicy(R"({"format": 1, "entry": "predictor/obj.pkl", "methods": ["make_prediction", "embed"]})");
  REQUIRE(p.ok());
  CHECK(p->entry == "predictor/obj.pkl");
  CHECK(p->methods == std::vector<std::string>{"make_prediction", "embed"});
  CHECK(ParseManifestPolicy(R"({"format": 1})")->entry.empty());
  CHECK(ParseManifestPolicy(R"({"methods": []})")->methods.empty());
  struct Case {
    const char* json;
    const char* why;
  };
  const Case cases[] = {
      {R"({"entry": 3})", "entry must be a string"},
      {R"({"entry": "../x.pkl"})", "leaves the archive"},
      {R"({"entry": "/model/model.pkl"})", "is an absolute path"},
      {R"({"entry": "model.pkl"})", "names no package"},
      {R"({"entry": "a/b.pkl", "entry": "a/c.pkl"})", "entry is given twice"},
      {R"({"methods": "make_prediction"})", "methods must be a list"},
      {R"({"methods": [1]})", "methods must be a list"},
      {R"({"methods": ["__call__"]})", "is private or special"},
      {R"({"methods": ["_helper"]})", "is private or special"},
      {R"({"methods": ["a b"]})", "is not a Python identifier"},
      {R"({"methods": ["m", "m"]})", "is named twice"},
      {R"({"methods": [], "methods": []})", "methods is given twice"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.json);
    auto r = ParseManifestPolicy(c.json);
    REQUIRE(r.status().code() == Code::kBadRequest);
    CHECK(r.status().message().find(c.why) != std::string::npos);
  }
  std::string many = R"({"methods": [)";
  for (size_t i = 0; i <= kMaxMethods; ++i) many += (i ? ", \"m" : "\"m") + std::to_string(i) + "\"";
  CHECK(ParseManifestPolicy(many + "]}").status().message().find("methods must be a list") != std::string::npos);
}

TEST_CASE("an entry names a pickle inside the archive, never a path out of it", "[served]") {
  for (const char* good : {"model/model.pkl", "pkg/name.pkl", "a/b/c.pkl", "fn/fn.pkl", "pkg/data.bin"}) {
    CAPTURE(good);
    CHECK(CheckEntryName(good).ok());
  }
  struct Case {
    std::string entry;
    const char* why;
  };
  const Case cases[] = {
      {"", "is empty"},
      {"../model/model.pkl", "leaves the archive"},
      {"a/../../x.pkl", "leaves the archive"},
      {"a/..", "leaves the archive"},
      {"/etc/passwd", "is an absolute path"},
      {"model.pkl", "names no package"},
      {"model/", "names no resource"},
      {"a//b.pkl", "is not a Python module name"},
      {"./a/b.pkl", "is not a Python module name"},
      {"my-pkg/x.pkl", "is not a Python module name"},
      {std::string("a/b\0.pkl", 8), "NUL or other control character"},
      {"a/" + std::string(kMaxEntryBytes, 'x'), "bytes long, more than 256"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.entry);
    auto st = CheckEntryName(c.entry);
    REQUIRE(st.code() == Code::kBadRequest);
    CHECK(st.message().find(c.why) != std::string::npos);
  }
  CHECK(CheckMethodName("make_prediction").ok());
  CHECK(CheckMethodName("forward").ok());
  CHECK(CheckMethodName(std::string(kMaxMethodNameBytes + 1, 'm')).code() == Code::kBadRequest);
  CHECK(CheckMethodNames(std::vector<std::string>(kMaxMethods + 1, "m")).message().find("at most 32") !=
        std::string::npos);
}

TEST_CASE("the manifest's tensor specs are read, and ones shoald cannot read are skipped", "[manifest]") {
  auto p = ParseManifestPolicy(R"({"name": "m", "inputs": [{"dtype": "float32", "shape": [null, 3, 224, 224], "name": "input0"}],
                                   "outputs": [{"dtype": "int64", "shape": [null]}, {"name": "scores", "dtype": "float16", "shape": []}]})");
  REQUIRE(p.ok());
  REQUIRE(p->inputs.size() == 1);
  CHECK(p->inputs[0].name == "input0");
  CHECK(p->inputs[0].dtype == "float32");
  CHECK(p->inputs[0].shape == std::vector<int64_t>{-1, 3, 224, 224});
  REQUIRE(p->outputs.size() == 2);
  CHECK(p->outputs[0].name.empty());
  CHECK(p->outputs[0].shape == std::vector<int64_t>{-1});
  CHECK(p->outputs[1].name == "scores");
  CHECK(p->outputs[1].shape.empty());
  // Not specs shoald can read: skipped (the worker refuses them when it loads the model),
  // and the keys after them are still read.
  for (const char* bad : {R"("nope")", R"([{"dtype": "float128", "shape": [1]}])", R"([{"dtype": "float32"}])",
                          R"([{"dtype": "float32", "shape": [-1]}])", R"([{"dtype": "float32", "shape": [1.5]}])",
                          R"([{"dtype": "float32", "shape": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}])", R"({})"}) {
    CAPTURE(bad);
    auto q = ParseManifestPolicy(std::string(R"({"inputs": )") + bad + R"(, "broadcast_inputs": true})");
    REQUIRE(q.ok());
    CHECK(q->inputs.empty());
    CHECK(q->broadcast_inputs);
  }
  CHECK(!ParseManifestPolicy(R"({"inputs": [{"dtype": "float32", "shape": [1]})").ok());  // not JSON
}
