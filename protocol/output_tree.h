// Encoding a model's output into an output tree (docs/protocol.md, "Output tree"): the one
// implementation, shared by both engines. The Python runner reaches it through
// shoal._native.encode_reply (python/native/native.cc adapts Python objects); the
// TorchScript runner through tensors/ivalue_output.h (adapts c10::IValue). An engine only
// says what each value is (OutputValue) and copies tensor bytes; which values may travel,
// the depth limit, the dict-key rule, where each tensor goes (in place inside an input, else
// one copy into a block of the worker's own output arenas for the job's client,
// shm/output_arenas.h) and every error message are decided here, so both engines answer
// the same output with the same tree or the same error.
// Thread-compatible: one EncodeOutputReply per job; OutputArenas is thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/frame.h"
#include "protocol/messages.h"
#include "shm/output_arenas.h"
#include "shoal/status.h"

namespace shoal {

// An output tree (the message, without the tensors' bytes) larger than this is a model
// error: with the reply around it, and shoald's reply to the client around that, it must
// fit in one frame (protocol/frame.h, kMaxFrameSize).
constexpr size_t kMaxOutputTreeBytes = kMaxFrameSize - (64 << 10);

// A node nested deeper than this (the root is at depth 0) is a model error; clients
// refuse such trees too (tensors/tree.h).
constexpr int kMaxOutputDepth = 16;
// A named tuple's type name and field names are cut to this many bytes.
constexpr size_t kMaxTupleNameBytes = 128;

// An output tensor as the encoder needs it: its first element at `data`, on the CPU or (with
// `device` >= 0) in GPU memory of that ordinal.
struct OutputTensor {
  std::string dtype;         // shoal's name (protocol/dtypes.h); empty when shoal has none
  std::string engine_dtype;  // the engine's name of the dtype, for the error when `dtype` is empty
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements, >= 0
  const uint8_t* data = nullptr;
  int device = -1;
  // Its memory at `data` holds its elements as they read: not a tensor with torch's lazy
  // negation or conjugation pending (a flag, not bytes), a zero tensor with no memory, or
  // (the Python engine) a tensor subclass whose answers the encoder cannot trust. Only
  // such a tensor is sent back in place or copied byte for byte; CopyTensor copies the rest
  // through the engine, which resolves them.
  bool plain = false;
};

// An integer output: Python's are unbounded, so it may not fit the wire's 64 bits.
struct OutputInt {
  enum Range { kSigned, kUnsigned, kTooLarge } range = kSigned;
  int64_t s = 0;     // kSigned
  uint64_t u = 0;    // kUnsigned: a value in [2^63, 2^64)
  std::string text;  // kTooLarge: its decimal digits, for the error
};

// One value of a model's output, seen through its engine. Accessors are called only for
// the kind the value has. Children may refer to their parent's storage and never outlive
// the encoding of the root.
class OutputValue {
 public:
  enum class Kind { kTensor, kTuple, kList, kDict, kFloat, kInt, kBool, kStr, kNone, kOther };
  virtual ~OutputValue() = default;

  virtual Kind kind() const = 0;
  // kOther: the engine's name of the value's type ("set", "Device").
  virtual std::string OtherTypeName() const { return "?"; }
  virtual double Float() const { return 0; }
  virtual OutputInt Int() const { return {}; }
  virtual bool Bool() const { return false; }
  virtual std::string Str() const { return {}; }
  // kTuple of a named tuple type (Python's collections.namedtuple / typing.NamedTuple,
  // TorchScript's NamedTuple): its type's name and field names; empty for a plain tuple.
  virtual std::string TupleName() const { return {}; }
  virtual std::vector<std::string> TupleFields() const { return {}; }
  // kTuple, kList: items; kDict: entries.
  virtual size_t Size() const { return 0; }
  virtual std::unique_ptr<OutputValue> Item(size_t /*i*/) const { return nullptr; }
  virtual std::unique_ptr<OutputValue> Key(size_t /*i*/) const { return nullptr; }
  virtual std::unique_ptr<OutputValue> Value(size_t /*i*/) const { return nullptr; }
  // kTensor: describes it, first moving it to the CPU (the value keeps that copy alive)
  // unless it is on a GPU and `keep_gpu`; an error carries the engine's message.
  virtual Result<OutputTensor> Tensor(bool /*keep_gpu*/) { return Status::Internal("not a tensor"); }
  // kTensor, after Tensor(): copies its elements to `dst` (memory on the tensor's own
  // device), laid out with `strides` (contiguous, in elements).
  virtual Status CopyTensor(uint8_t* /*dst*/, const std::vector<int64_t>& /*strides*/) {
    return Status::Internal("not a tensor");
  }
};

// The bytes of one input of the job: [start, end) of arena `arena` (mapped at `base`
// here), allocated as block `block`. An output tensor inside it goes back in place.
struct InputSpan {
  uint64_t arena = 0;
  uint64_t block = 0;
  uint64_t start = 0;
  uint64_t end = 0;
  const uint8_t* base = nullptr;
};

// Where output tensors go: in place when inside an input (no block: the client keeps the
// input's block alive), else one block of `outputs` for connection `client`; such a block
// stays the worker's until the client releases it (docs/protocol.md, "release").
struct OutputPlacement {
  OutputArenas* outputs = nullptr;  // must outlive the encoding
  uint64_t client = 0;              // shoald's id of the job's connection
  OutputLimits limits;
  std::vector<InputSpan> inputs;
  // Outputs on a GPU stay there (a block of a GPU output arena), unless the client asked
  // for host tensors ("outputs": "cpu" in the infer).
  bool keep_gpu = true;
};

// The output limits shoald sends with each infer ("out_bytes", "out_arenas"); defaults
// where absent.
OutputLimits OutputLimitsOf(const MapView& infer);
// Whether a job's GPU outputs stay on the GPU (the infer's "outputs" is not "cpu").
bool KeepGpuOutputs(const MapView& infer);

// A reply and the fds of the arenas it announces (owned by the OutputArenas; attach them
// to the reply's frame, in order).
struct EncodedReply {
  std::string body;
  std::vector<int> fds;
};

// The reply to job `job` of model `model` whose output is `root`:
// {"v":1,"id":job,"ok":true,"outputs":tree,"usage":{owner,bytes,arenas}
//  [,"new_arenas":[{"arena","size"[,"gpu":pci bus id]}]]}; new_arenas lists the client's output arenas made
// since this owner's last reply, their fds in `fds`. On failure every block it allocated
// is freed again and the error (MODEL_ERROR, or ARENA_FULL when an output does not fit)
// names the model and the job.
Result<EncodedReply> EncodeOutputReply(uint64_t job, std::string_view model, OutputValue& root,
                                       const OutputPlacement& place);

// One argument of a model call as a node of its call structure (docs/protocol.md, "Call
// structure"), for the C++ client: the same walk and rules as an output, with each tensor
// written {"input": i}, i from `tensor` (which places it among the request's inputs).
// BAD_REQUEST for what cannot travel.
using CallTensorFn = std::function<Result<uint64_t>(OutputValue&)>;
Result<std::string> EncodeCallNode(OutputValue& v, const CallTensorFn& tensor);

// {"v":1,"op":"usage","usage":{owner,bytes,arenas}}: what an owner holds, sent after it frees
// blocks or drops a client's arenas (shoald shows it in status).
std::string UsageNotice(const OutputUsage& usage);

}  // namespace shoal
