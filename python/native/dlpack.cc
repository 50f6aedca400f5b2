// shoal._native.byte_capsule(owner, address, nbytes, device) -> a DLPack capsule: `nbytes`
// bytes at `address` (host memory for device -1, else GPU memory of CUDA ordinal `device`)
// as a 1-D uint8 tensor for torch.utils.dlpack.from_dlpack, which keeps `owner` (the Block
// or Arena the bytes belong to) alive until torch lets the memory go.
//
// Why: torch.as_tensor over __cuda_array_interface__ parses a dict and asks the driver
// which device owns the pointer (cudaPointerGetAttributes) for every tensor; a DLPack
// tensor names its device, and torch makes its storage with our deleter and nothing else.
// The capsule carries no stream: ordering is shoal's (docs/architecture.md, "GPU").
// The structs are DLPack's ABI (dlpack.h, "legacy" DLManagedTensor, the capsule name
// "dltensor"), stable since DLPack 0.2 and read by every torch shoal supports.
// Thread-safety: called with the GIL; the deleter takes the GIL itself (torch may free the
// storage on any thread).
#include <cstdint>

#include "python/native/native.h"

namespace shoal_native {

namespace {

// dlpack.h, by value.
struct DLDevice {
  int32_t device_type;  // kDLCPU = 1, kDLCUDA = 2
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // kDLUInt = 1
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // nullptr: compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;
constexpr uint8_t kDLUInt = 1;
constexpr const char* kCapsuleName = "dltensor";      // not consumed yet
constexpr const char* kUsedCapsuleName = "used_dltensor";  // torch renames what it took

// One allocation: the DLManagedTensor, its shape, and the owner it keeps.
struct Managed {
  DLManagedTensor tensor;
  int64_t shape[1];
  PyObject* owner;
};

void Delete(DLManagedTensor* self) {
  auto* m = static_cast<Managed*>(self->manager_ctx);
  if (!Py_IsInitialized()) {  // a tensor freed after Python's end: the owner went with it
    delete m;
    return;
  }
  PyGILState_STATE gil = PyGILState_Ensure();
  Py_XDECREF(m->owner);
  PyGILState_Release(gil);
  delete m;
}

// A capsule torch never took is freed with it (torch renames one it took, and owns it).
void CapsuleGone(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, kUsedCapsuleName)) return;
  auto* t = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kCapsuleName));
  if (t == nullptr) {
    PyErr_Clear();
    return;
  }
  // The GIL is held here (a capsule's destructor); Delete takes it again, which is allowed.
  t->deleter(t);
}

PyObject* ByteCapsule(PyObject*, PyObject* args) {
  PyObject* owner;
  unsigned long long address, nbytes;
  int device;
  if (!PyArg_ParseTuple(args, "OKKi", &owner, &address, &nbytes, &device)) return nullptr;
  if (device < -1) {
    PyErr_Format(PyExc_ValueError, "byte_capsule: device %d is neither -1 (host) nor a CUDA ordinal", device);
    return nullptr;
  }
  auto* m = new Managed{};
  m->shape[0] = static_cast<int64_t>(nbytes);
  m->owner = owner;
  Py_INCREF(owner);
  DLTensor& t = m->tensor.dl_tensor;
  t.data = reinterpret_cast<void*>(static_cast<uintptr_t>(address));
  t.device = device < 0 ? DLDevice{kDLCPU, 0} : DLDevice{kDLCUDA, device};
  t.ndim = 1;
  t.dtype = DLDataType{kDLUInt, 8, 1};
  t.shape = m->shape;
  t.strides = nullptr;
  t.byte_offset = 0;
  m->tensor.manager_ctx = m;
  m->tensor.deleter = Delete;
  PyObject* capsule = PyCapsule_New(&m->tensor, kCapsuleName, CapsuleGone);
  if (capsule == nullptr) Delete(&m->tensor);
  return capsule;
}

PyMethodDef kMethods[] = {
    {"byte_capsule", ByteCapsule, METH_VARARGS,
     "byte_capsule(owner, address, nbytes, device) -> a DLPack capsule of nbytes bytes at address (device -1: "
     "host memory, else that CUDA ordinal's) for torch.utils.dlpack.from_dlpack, which keeps owner alive as long "
     "as the memory is in use"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool AddDlpack(PyObject* module) { return PyModule_AddFunctions(module, kMethods) == 0; }

}  // namespace shoal_native
