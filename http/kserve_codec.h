// The KServe v2 (Open Inference Protocol) infer request and response bodies <-> shoal's
// call (docs/http.md): JSON tensors and the binary tensor data extension (a JSON header of
// Inference-Header-Content-Length bytes, then each binary tensor's bytes in order).
//
// Inputs become the model's arguments by name: "NAME__N" (Triton's PyTorch convention,
// "INPUT__0") is positional argument N; any other name is the keyword argument NAME
// (forward(self, input_ids, attention_mask)). BYTES inputs become str (one element) or a
// list of str. Outputs take names from the model's result: a tensor is "output__0", a
// tuple or list "output__I", a dict or named tuple its keys; scalars are 0-d tensors,
// a string BYTES [1], a list of strings one BYTES [N] (at the top too: "output__0").
// Deeper structures cannot be expressed as v2 tensors and are an error.
//
// Datatypes map to shoal's dtype table (protocol/dtypes.h) by one table here; complex
// tensors have no v2 datatype.
// Pure functions of their arguments (tensors are allocated through `alloc`). Thread-safe.
#pragma once

#include <ATen/core/ivalue.h>
#include <torch/types.h>  // torch::Tensor and the factories; not torch/torch.h (nn, optim, data: much slower to compile)

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/status.h"

namespace shoal {

// v2 datatype ("FP32") <-> torch scalar type; nullopt / empty where there is none.
std::optional<at::ScalarType> ScalarTypeOfV2(std::string_view datatype);
std::string V2DataType(at::ScalarType t);

struct V2Request {
  std::string id;                                   // echoed in the response
  std::vector<c10::IValue> args;                    // positional, from "NAME__N"
  std::map<std::string, c10::IValue> kwargs;        // the other inputs, by name
  std::optional<std::vector<std::string>> outputs;  // asked for by name; none: all
  std::map<std::string, bool> binary;               // per asked output: as binary data?
  bool binary_default = false;                      // parameters.binary_data_output
  std::optional<int64_t> timeout_ms;                // parameters.timeout (Triton's, in us), rounded up to ms
};

// Allocates a tensor to fill (the client's shared memory, so that it travels without
// another copy).
using V2Alloc = std::function<Result<torch::Tensor>(at::IntArrayRef shape, at::ScalarType dtype)>;

// Parses an infer request body; `header_length`: the Inference-Header-Content-Length
// header's value (the JSON's length; the rest is binary tensor data), none for JSON only.
// BAD_REQUEST with what is wrong and where ("inputs[1] ('mask'): ...").
Result<V2Request> ParseV2Request(std::string_view body, std::optional<size_t> header_length, const V2Alloc& alloc);

struct V2Response {
  std::string body;
  std::optional<size_t> header_length;  // set when binary data follows the JSON
};

// The response to `request` for the model's result `out`. An error (INTERNAL) when the
// result cannot be v2 tensors; BAD_REQUEST when an asked output does not exist.
Result<V2Response> EncodeV2Response(const std::string& model, const std::string& version, const V2Request& request,
                                    const c10::IValue& out);

// {"error": message}: the v2 error body.
std::string V2Error(const std::string& message);

}  // namespace shoal
