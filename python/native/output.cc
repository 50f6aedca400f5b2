// shoal._native's output encoding: the Python runner encodes a model's output with the one
// C++ encoder (protocol/output_tree.h), through PyOutput, which says what each Python
// object is. TorchScript results take the same encoder through tensors/ivalue_output.h.
//
//   encode_reply(job, model, output, outputs, client, arena_bytes, arenas_per_client, inputs,
//                write, keep_gpu=True) -> bytes, or (bytes, [fd]) when the reply announces
//                new output arenas; keep_gpu: CUDA outputs go to GPU output arenas
//     outputs: the runner's _native.OutputArenas; client: shoald's id of the connection
//     inputs: [(arena_id, block, start, end, address)], the job's input byte ranges
//     write(buffer, offset, tensor): copies `tensor` (on the CPU) contiguously to `offset`
//   OutputError(code, message): the output cannot be sent back (MODEL_ERROR, ARENA_FULL);
//     the message names the model and the job.
// Thread-safety: called with the GIL held; runs Python (tensor.cpu(), write) on this thread.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "protocol/dtypes.h"
#include "protocol/output_tree.h"
#include "python/native/native.h"

namespace shoal_native {

namespace {

PyObject* g_output_error = nullptr;  // shoal._native.OutputError

// What every PyOutput of one encoding shares.
struct Context {
  PyObject* tensor_type;  // torch.Tensor (borrowed from the call)
  PyObject* write;        // write(buffer, offset, tensor) (borrowed)
};

// A Python object of a model's output. Holds a reference to it (and to what it derives:
// the items of a container, the CPU copy of a tensor) until it is destroyed.
class PyOutput : public shoal::OutputValue {
 public:
  PyOutput(PyObject* obj, const Context* ctx) : obj_(Py_NewRef(obj)), ctx_(ctx) { kind_ = Classify(); }
  ~PyOutput() override {
    Py_XDECREF(items_);
    Py_XDECREF(cpu_);
    Py_DECREF(obj_);
  }
  PyOutput(const PyOutput&) = delete;
  PyOutput& operator=(const PyOutput&) = delete;

  Kind kind() const override { return kind_; }
  std::string OtherTypeName() const override {
    PyObject* name = PyObject_GetAttrString(reinterpret_cast<PyObject*>(Py_TYPE(obj_)), "__name__");
    const char* s = name != nullptr ? PyUnicode_AsUTF8(name) : nullptr;
    std::string out = s != nullptr ? s : Py_TYPE(obj_)->tp_name;
    Py_XDECREF(name);
    PyErr_Clear();
    return out;
  }
  double Float() const override { return PyFloat_AsDouble(obj_); }
  bool Bool() const override { return obj_ == Py_True; }
  std::string Str() const override {
    PyObject* b = PyUnicode_AsEncodedString(obj_, "utf-8", "backslashreplace");
    std::string out = b != nullptr ? std::string(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)) : "";
    Py_XDECREF(b);
    PyErr_Clear();
    return out;
  }
  shoal::OutputInt Int() const override {
    shoal::OutputInt out;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj_, &overflow);
    if (overflow == 0 && !(v == -1 && PyErr_Occurred())) {
      out.s = v;
      return out;
    }
    PyErr_Clear();
    if (overflow > 0) {
      unsigned long long u = PyLong_AsUnsignedLongLong(obj_);
      if (!PyErr_Occurred()) {
        out.range = shoal::OutputInt::kUnsigned;
        out.u = u;
        return out;
      }
      PyErr_Clear();
    }
    out.range = shoal::OutputInt::kTooLarge;
    PyObject* text = PyObject_Str(obj_);
    const char* t = text != nullptr ? PyUnicode_AsUTF8(text) : nullptr;
    out.text = t != nullptr ? t : "?";
    Py_XDECREF(text);
    PyErr_Clear();
    return out;
  }
  // A tuple whose type has `_fields` (collections.namedtuple, typing.NamedTuple).
  std::string TupleName() const override {
    return PyTuple_Check(obj_) && !PyTuple_CheckExact(obj_) ? Py_TYPE(obj_)->tp_name : std::string();
  }
  std::vector<std::string> TupleFields() const override {
    std::vector<std::string> out;
    if (!PyTuple_Check(obj_) || PyTuple_CheckExact(obj_)) return out;
    PyObject* fields = PyObject_GetAttrString(reinterpret_cast<PyObject*>(Py_TYPE(obj_)), "_fields");
    if (fields != nullptr && PyTuple_Check(fields)) {
      for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields); ++i) {
        const char* f = PyUnicode_Check(PyTuple_GET_ITEM(fields, i)) ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(fields, i))
                                                                     : nullptr;
        if (f == nullptr) {
          out.clear();  // not a named tuple after all: a plain tuple
          break;
        }
        out.emplace_back(f);
      }
    }
    Py_XDECREF(fields);
    PyErr_Clear();
    return out;
  }
  size_t Size() const override { return items_ != nullptr ? static_cast<size_t>(PySequence_Fast_GET_SIZE(items_)) : 0; }
  std::unique_ptr<OutputValue> Item(size_t i) const override {
    return std::make_unique<PyOutput>(PySequence_Fast_GET_ITEM(items_, i), ctx_);
  }
  std::unique_ptr<OutputValue> Key(size_t i) const override {
    return std::make_unique<PyOutput>(PyTuple_GET_ITEM(PySequence_Fast_GET_ITEM(items_, i), 0), ctx_);
  }
  std::unique_ptr<OutputValue> Value(size_t i) const override {
    return std::make_unique<PyOutput>(PyTuple_GET_ITEM(PySequence_Fast_GET_ITEM(items_, i), 1), ctx_);
  }

  shoal::Result<shoal::OutputTensor> Tensor(bool keep_gpu) override {
    shoal::OutputTensor t;
    if (cpu_ == nullptr && keep_gpu) {
      // A CUDA tensor stays on its GPU: CopyTensor copies it device to device.
      PyObject* is_cuda = PyObject_GetAttrString(obj_, "is_cuda");
      if (is_cuda == nullptr) return FetchPythonError();
      bool on_gpu = is_cuda == Py_True;
      Py_DECREF(is_cuda);
      if (on_gpu) {
        PyObject* index = PyObject_CallMethod(obj_, "get_device", nullptr);
        if (index == nullptr) return FetchPythonError();
        device_ = static_cast<int>(PyLong_AsLong(index));
        Py_DECREF(index);
        cpu_ = Py_NewRef(obj_);
      }
    }
    if (cpu_ == nullptr) cpu_ = PyObject_CallMethod(obj_, "cpu", nullptr);  // itself when on the CPU
    if (cpu_ == nullptr) return FetchPythonError();
    t.device = device_;
    PyObject* dtype = PyObject_GetAttrString(cpu_, "dtype");
    PyObject* dtype_str = dtype != nullptr ? PyObject_Str(dtype) : nullptr;
    const char* d = dtype_str != nullptr ? PyUnicode_AsUTF8(dtype_str) : nullptr;
    if (d != nullptr) {
      std::string_view name(d);
      t.engine_dtype = std::string(name);
      if (name.rfind("torch.", 0) == 0 && shoal::FindDType(name.substr(6)) != nullptr) t.dtype = name.substr(6);
    }
    Py_XDECREF(dtype_str);
    Py_XDECREF(dtype);
    if (d == nullptr) return FetchPythonError();
    PyObject* shape = PyObject_GetAttrString(cpu_, "shape");
    PyObject* strides = PyObject_CallMethod(cpu_, "stride", nullptr);
    PyObject* ptr = PyObject_CallMethod(cpu_, "data_ptr", nullptr);
    bool ok = shape != nullptr && strides != nullptr && ptr != nullptr && Ints(shape, &t.shape) &&
              Ints(strides, &t.strides);
    if (ok) {
      t.data = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(PyLong_AsUnsignedLongLong(ptr)));
      ok = !PyErr_Occurred();
    }
    // Plain: a torch.Tensor itself (a subclass may answer anything), with memory (a zero
    // tensor has none: data_ptr 0) and no negation or conjugation pending.
    bool lazy = false;
    if (ok && Py_TYPE(cpu_) == reinterpret_cast<PyTypeObject*>(ctx_->tensor_type) && t.data != nullptr) {
      ok = Flag("is_neg", &lazy) && (lazy || t.dtype.rfind("complex", 0) != 0 || Flag("is_conj", &lazy));
      t.plain = ok && !lazy;
    }
    nbytes_ = shoal::DTypeSize(t.dtype);
    for (int64_t n : t.shape) nbytes_ *= static_cast<uint64_t>(std::max<int64_t>(n, 0));
    Py_XDECREF(shape);
    Py_XDECREF(strides);
    Py_XDECREF(ptr);
    if (!ok) return FetchPythonError();
    return t;
  }

  shoal::Status CopyTensor(uint8_t* dst, const std::vector<int64_t>& /*contiguous strides*/) override {
    // The block, as a writable buffer of exactly its bytes (the encoder allocated it); a
    // GPU block as its device address (write builds a CUDA tensor over it).
    PyObject* buffer = device_ >= 0 ? PyLong_FromUnsignedLongLong(reinterpret_cast<uintptr_t>(dst))
                                    : PyMemoryView_FromMemory(reinterpret_cast<char*>(dst),
                                                              static_cast<Py_ssize_t>(nbytes_), PyBUF_WRITE);
    if (buffer == nullptr) return FetchPythonError();
    PyObject* r = PyObject_CallFunction(ctx_->write, "OKO", buffer, 0ULL, cpu_);
    Py_DECREF(buffer);
    if (r == nullptr) return FetchPythonError();
    Py_DECREF(r);
    return shoal::Status::Ok();
  }

 private:
  Kind Classify() {
    // The order of the checks matters: a bool is an int, and a tensor subclass may be anything.
    int is_tensor = PyObject_IsInstance(obj_, ctx_->tensor_type);
    if (is_tensor < 0) PyErr_Clear();
    if (is_tensor > 0) return Kind::kTensor;
    if (PyFloat_Check(obj_)) return Kind::kFloat;
    if (obj_ == Py_None) return Kind::kNone;
    if (PyBool_Check(obj_)) return Kind::kBool;
    if (PyLong_Check(obj_)) return Kind::kInt;
    if (PyUnicode_Check(obj_)) return Kind::kStr;
    if (PyTuple_Check(obj_) || PyList_Check(obj_)) {
      // A snapshot: model code that runs later (tensor.cpu()) cannot change what we walk.
      items_ = PySequence_Fast(obj_, "");
      if (items_ != nullptr) return PyTuple_Check(obj_) ? Kind::kTuple : Kind::kList;
      PyErr_Clear();
      return Kind::kOther;
    }
    if (PyDict_Check(obj_)) {
      items_ = PyDict_Items(obj_);
      if (items_ != nullptr) return Kind::kDict;
      PyErr_Clear();
    }
    return Kind::kOther;
  }

  // *out |= tensor.method(); false with a Python error set when the call fails.
  bool Flag(const char* method, bool* out) const {
    PyObject* r = PyObject_CallMethod(cpu_, method, nullptr);
    if (r == nullptr) return false;
    *out = *out || r == Py_True;
    Py_DECREF(r);
    return true;
  }

  static bool Ints(PyObject* seq, std::vector<int64_t>* out) {
    PyObject* fast = PySequence_Fast(seq, "expected a sequence of ints");
    if (fast == nullptr) return false;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); ++i) {
      long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
      if (v == -1 && PyErr_Occurred()) {
        Py_DECREF(fast);
        return false;
      }
      out->push_back(v);
    }
    Py_DECREF(fast);
    return true;
  }

  PyObject* obj_;
  const Context* ctx_;
  Kind kind_ = Kind::kOther;
  PyObject* items_ = nullptr;  // tuple/list: the items; dict: a list of (key, value)
  PyObject* cpu_ = nullptr;    // tensor: its CPU version (or itself, kept on its GPU)
  int device_ = -1;            // tensor kept on GPU `device_`
  uint64_t nbytes_ = 0;        // tensor: its bytes when dense (what CopyTensor writes)
};

bool Spans(PyObject* inputs, std::vector<shoal::InputSpan>* out) {
  PyObject* fast = PySequence_Fast(inputs, "inputs must be a sequence of (arena, block, start, end, address)");
  if (fast == nullptr) return false;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); ++i) {
    unsigned long long arena, block, start, end, address;
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "KKKKK", &arena, &block, &start, &end, &address)) {
      Py_DECREF(fast);
      return false;
    }
    out->push_back({arena, block, start, end, reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(address))});
  }
  Py_DECREF(fast);
  return true;
}

PyObject* EncodeReply(PyObject*, PyObject* args) {
  unsigned long long job, client, arena_bytes;
  unsigned int arenas_per_client;
  const char* model;
  PyObject *output, *outputs, *inputs, *write;
  int keep_gpu = 1;
  if (!PyArg_ParseTuple(args, "KsOOKKIOO|p", &job, &model, &output, &outputs, &client, &arena_bytes,
                        &arenas_per_client, &inputs, &write, &keep_gpu)) {
    return nullptr;
  }
  Context ctx{nullptr, write};
  shoal::OutputPlacement place;
  place.outputs = OutputArenasOf(outputs);
  if (place.outputs == nullptr) {
    PyErr_SetString(PyExc_TypeError, "encode_reply: outputs must be a shoal._native.OutputArenas");
    return nullptr;
  }
  place.client = client;
  place.keep_gpu = keep_gpu != 0;
  place.limits.arena_bytes = std::max<unsigned long long>(arena_bytes, 4096);
  place.limits.arenas_per_client = std::max(arenas_per_client, 1u);
  if (!Spans(inputs, &place.inputs)) return nullptr;
  PyObject* torch = PyImport_ImportModule("torch");
  if (torch == nullptr) return nullptr;
  ctx.tensor_type = PyObject_GetAttrString(torch, "Tensor");
  Py_DECREF(torch);
  if (ctx.tensor_type == nullptr) return nullptr;
  shoal::Result<shoal::EncodedReply> reply = shoal::Status::Ok();
  {
    PyOutput root(output, &ctx);
    reply = shoal::EncodeOutputReply(job, model, root, place);
  }
  Py_DECREF(ctx.tensor_type);
  if (!reply.ok()) {
    PyObject* err = Py_BuildValue("(ss)", shoal::CodeName(reply.status().code()), reply.status().message().c_str());
    if (err != nullptr) {
      PyErr_SetObject(g_output_error, err);
      Py_DECREF(err);
    }
    return nullptr;
  }
  PyObject* body = PyBytes_FromStringAndSize(reply->body.data(), static_cast<Py_ssize_t>(reply->body.size()));
  if (body == nullptr || reply->fds.empty()) return body;
  PyObject* fds = PyList_New(0);
  for (int fd : reply->fds) {
    PyObject* n = PyLong_FromLong(fd);
    PyList_Append(fds, n);
    Py_DECREF(n);
  }
  return Py_BuildValue("(NN)", body, fds);
}

PyMethodDef kMethods[] = {
    {"encode_reply", EncodeReply, METH_VARARGS,
     "encode_reply(job, model, output, outputs, client, arena_bytes, arenas_per_client, inputs, write) -> bytes "
     "or (bytes, [fd]): the reply to an infer job (raises OutputError(code, message) when the output cannot be "
     "sent back)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool AddOutputEncoder(PyObject* m) {
  g_output_error = AddException(m, "OutputError", PyExc_Exception);
  return g_output_error != nullptr && PyModule_AddFunctions(m, kMethods) == 0;
}

}  // namespace shoal_native
