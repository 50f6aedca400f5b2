// shoal._native.GpuMemory: GPU memory that travels between processes as a file descriptor
// (shm/gpu_memory.h), for a worker's shared GPU weights (python/shoal/_gpu_weights.py).
//   GpuMemory.create(ordinal, size)                   a new exportable allocation, mapped read-write
//   GpuMemory.import_fd(fd, size, ordinal, read_only) another process's allocation (takes fd)
//   .address  .size  .ordinal  .fd (the owner's exported fd, -1 for an import)
// The mapping lives as long as the object. Calls that wait on the driver release the GIL.
#include <memory>

#include "python/native/native.h"
#include "shm/gpu_memory.h"

namespace {

struct GpuMemoryObject {
  PyObject_HEAD
  shoal::GpuMemory* memory;
};

PyTypeObject GpuMemoryType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyObject* Wrap(shoal::Result<std::unique_ptr<shoal::GpuMemory>> m) {
  if (!m.ok()) {
    PyErr_SetString(PyExc_OSError, m.status().message().c_str());
    return nullptr;
  }
  auto* self = PyObject_New(GpuMemoryObject, &GpuMemoryType);
  if (self == nullptr) return nullptr;
  self->memory = m.value().release();
  return reinterpret_cast<PyObject*>(self);
}

PyObject* GpuMemory_create(PyObject*, PyObject* args) {
  int ordinal;
  unsigned long long size;
  if (!PyArg_ParseTuple(args, "iK", &ordinal, &size)) return nullptr;
  shoal::Result<std::unique_ptr<shoal::GpuMemory>> m = shoal::Status::Ok();
  Py_BEGIN_ALLOW_THREADS m = shoal::GpuMemory::Create(ordinal, size);
  Py_END_ALLOW_THREADS return Wrap(std::move(m));
}

PyObject* GpuMemory_import_fd(PyObject*, PyObject* args) {
  int fd, ordinal, read_only;
  unsigned long long size;
  if (!PyArg_ParseTuple(args, "iKip", &fd, &size, &ordinal, &read_only)) return nullptr;
  shoal::Result<std::unique_ptr<shoal::GpuMemory>> m = shoal::Status::Ok();
  Py_BEGIN_ALLOW_THREADS m = shoal::GpuMemory::Import(fd, size, ordinal, read_only != 0);
  Py_END_ALLOW_THREADS return Wrap(std::move(m));
}

void GpuMemory_dealloc(GpuMemoryObject* self) {
  Py_BEGIN_ALLOW_THREADS delete self->memory;  // unmaps: may wait for the driver
  Py_END_ALLOW_THREADS PyObject_Del(self);
}

PyObject* GpuMemory_address(GpuMemoryObject* self, void*) { return PyLong_FromUnsignedLongLong(self->memory->address()); }
PyObject* GpuMemory_size(GpuMemoryObject* self, void*) { return PyLong_FromSize_t(self->memory->size()); }
PyObject* GpuMemory_ordinal(GpuMemoryObject* self, void*) { return PyLong_FromLong(self->memory->ordinal()); }
PyObject* GpuMemory_fd(GpuMemoryObject* self, void*) { return PyLong_FromLong(self->memory->fd()); }

PyMethodDef GpuMemory_methods[] = {
    {"create", GpuMemory_create, METH_VARARGS | METH_STATIC,
     "create(ordinal, size) -> a new exportable allocation on GPU `ordinal`, mapped read-write"},
    {"import_fd", GpuMemory_import_fd, METH_VARARGS | METH_STATIC,
     "import_fd(fd, size, ordinal, read_only) -> the allocation behind `fd` (taken), mapped here"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef GpuMemory_getset[] = {
    {"address", reinterpret_cast<getter>(GpuMemory_address), nullptr, "device address of byte 0", nullptr},
    {"size", reinterpret_cast<getter>(GpuMemory_size), nullptr, "bytes mapped", nullptr},
    {"ordinal", reinterpret_cast<getter>(GpuMemory_ordinal), nullptr, "the GPU (this process's ordinal)", nullptr},
    {"fd", reinterpret_cast<getter>(GpuMemory_fd), nullptr, "the exported fd (the creator's), -1 for an import",
     nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

}  // namespace

namespace shoal_native {

bool AddGpuMemoryType(PyObject* module) {
  return AddType(module, &GpuMemoryType,
                 TypeSpec{"shoal._native.GpuMemory", sizeof(GpuMemoryObject), nullptr,
                          reinterpret_cast<destructor>(GpuMemory_dealloc), GpuMemory_methods, GpuMemory_getset,
                          "GPU memory shared by file descriptor (CUDA VMM)"});
}

}  // namespace shoal_native
