// shoal._native's arenas for Python (clients and the worker's runner).
//
//   Arena.create(size, name) / Arena.open(fd)  -> Arena (buffer protocol over the whole region)
//   arena.alloc(nbytes) -> offset   arena.free(offset)   arena.fd / .size / .address
//   Block(arena, offset, nbytes, owned)  -> buffer over [offset, offset+nbytes); frees the
//                                           block when the last reference goes if `owned`
// torch.frombuffer keeps a reference to the object it reads, so a tensor built over a
// Block keeps the block alive, and dropping the tensor frees it.
// Thread-safety: the GIL protects the Python objects; Allocate/Free are process-safe.
#include <cstddef>
#include <memory>

#include "python/native/native.h"

namespace {

PyObject* g_arena_full = nullptr;  // shoal._native.ArenaFullError

struct ArenaObject {
  PyObject_HEAD
  shoal::Arena* arena;
};

struct BlockObject {
  PyObject_HEAD
  PyObject* arena;  // ArenaObject*
  uint64_t offset;
  uint64_t nbytes;
  int owned;
  PyObject* weakrefs;  // the client tracks blocks of empty() by weak reference
};

PyObject* RaiseStatus(const shoal::Status& st) {
  PyErr_SetString(st.code() == shoal::Code::kArenaFull ? g_arena_full : PyExc_OSError, st.message().c_str());
  return nullptr;
}

extern PyTypeObject ArenaType;
extern PyTypeObject BlockType;

PyObject* WrapArena(std::unique_ptr<shoal::Arena> a) {
  ArenaObject* self = PyObject_New(ArenaObject, &ArenaType);
  if (self == nullptr) return nullptr;
  self->arena = a.release();
  return reinterpret_cast<PyObject*>(self);
}

PyObject* Arena_create(PyObject*, PyObject* args) {
  unsigned long long size;
  const char* name = "shoal-arena";
  if (!PyArg_ParseTuple(args, "K|s", &size, &name)) return nullptr;
  auto a = shoal::Arena::Create(name, size);
  if (!a.ok()) return RaiseStatus(a.status());
  return WrapArena(std::move(a.value()));
}

PyObject* Arena_open(PyObject*, PyObject* args) {
  int fd;
  if (!PyArg_ParseTuple(args, "i", &fd)) return nullptr;
  auto a = shoal::Arena::Open(fd);
  if (!a.ok()) return RaiseStatus(a.status());
  return WrapArena(std::move(a.value()));
}

void Arena_dealloc(ArenaObject* self) {
  delete self->arena;
  PyObject_Del(self);
}

PyObject* Arena_alloc(ArenaObject* self, PyObject* args) {
  unsigned long long n;
  if (!PyArg_ParseTuple(args, "K", &n)) return nullptr;
  shoal::Result<uint64_t> off = shoal::Status::Ok();
  Py_BEGIN_ALLOW_THREADS off = self->arena->Allocate(n);
  Py_END_ALLOW_THREADS if (!off.ok()) return RaiseStatus(off.status());
  return PyLong_FromUnsignedLongLong(*off);
}

PyObject* Arena_free(ArenaObject* self, PyObject* args) {
  unsigned long long off;
  if (!PyArg_ParseTuple(args, "K", &off)) return nullptr;
  if (off >= self->arena->size()) {
    PyErr_SetString(PyExc_ValueError, "offset outside the arena");
    return nullptr;
  }
  self->arena->Free(off);
  Py_RETURN_NONE;
}

PyObject* Arena_free_bytes(ArenaObject* self, PyObject*) { return PyLong_FromSize_t(self->arena->FreeBytes()); }
PyObject* Arena_get_fd(ArenaObject* self, void*) { return PyLong_FromLong(self->arena->fd()); }
PyObject* Arena_get_size(ArenaObject* self, void*) { return PyLong_FromSize_t(self->arena->size()); }
PyObject* Arena_get_address(ArenaObject* self, void*) {
  return PyLong_FromUnsignedLongLong(reinterpret_cast<uintptr_t>(self->arena->base()));
}

int Arena_getbuffer(ArenaObject* self, Py_buffer* view, int flags) {
  return PyBuffer_FillInfo(view, reinterpret_cast<PyObject*>(self), self->arena->base(),
                           static_cast<Py_ssize_t>(self->arena->size()), 0, flags);
}

PyMethodDef Arena_methods[] = {
    {"create", Arena_create, METH_VARARGS | METH_STATIC, "create(size, name='shoal-arena') -> Arena"},
    {"open", Arena_open, METH_VARARGS | METH_STATIC, "open(fd) -> Arena (takes ownership of fd)"},
    {"alloc", reinterpret_cast<PyCFunction>(Arena_alloc), METH_VARARGS, "alloc(nbytes) -> offset (64-aligned)"},
    {"free", reinterpret_cast<PyCFunction>(Arena_free), METH_VARARGS, "free(offset)"},
    {"free_bytes", reinterpret_cast<PyCFunction>(Arena_free_bytes), METH_NOARGS, "bytes not handed out"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef Arena_getset[] = {
    {"fd", reinterpret_cast<getter>(Arena_get_fd), nullptr, "memfd", nullptr},
    {"size", reinterpret_cast<getter>(Arena_get_size), nullptr, "bytes", nullptr},
    {"address", reinterpret_cast<getter>(Arena_get_address), nullptr, "base address here", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyBufferProcs Arena_as_buffer = {reinterpret_cast<getbufferproc>(Arena_getbuffer), nullptr};

PyTypeObject ArenaType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// ---- Block -----------------------------------------------------------------

PyObject* Block_new(PyTypeObject* type, PyObject* args, PyObject*) {
  PyObject* arena;
  unsigned long long offset, nbytes;
  int owned = 1;
  if (!PyArg_ParseTuple(args, "O!KK|p", &ArenaType, &arena, &offset, &nbytes, &owned)) return nullptr;
  auto* a = reinterpret_cast<ArenaObject*>(arena)->arena;
  if (!a->Contains(offset, nbytes)) {
    PyErr_SetString(PyExc_ValueError, "block lies outside its arena");
    return nullptr;
  }
  auto* self = reinterpret_cast<BlockObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  Py_INCREF(arena);
  self->arena = arena;
  self->offset = offset;
  self->nbytes = nbytes;
  self->owned = owned;
  self->weakrefs = nullptr;
  return reinterpret_cast<PyObject*>(self);
}

void Block_dealloc(BlockObject* self) {
  if (self->weakrefs != nullptr) PyObject_ClearWeakRefs(reinterpret_cast<PyObject*>(self));
  if (self->owned) reinterpret_cast<ArenaObject*>(self->arena)->arena->Free(self->offset);
  Py_DECREF(self->arena);
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

int Block_getbuffer(BlockObject* self, Py_buffer* view, int flags) {
  auto* a = reinterpret_cast<ArenaObject*>(self->arena)->arena;
  return PyBuffer_FillInfo(view, reinterpret_cast<PyObject*>(self), a->base() + self->offset,
                           static_cast<Py_ssize_t>(self->nbytes), 0, flags);
}

PyObject* Block_get_offset(BlockObject* self, void*) { return PyLong_FromUnsignedLongLong(self->offset); }
PyObject* Block_get_nbytes(BlockObject* self, void*) { return PyLong_FromUnsignedLongLong(self->nbytes); }
PyObject* Block_get_arena(BlockObject* self, void*) {
  Py_INCREF(self->arena);
  return self->arena;
}
PyObject* Block_release(BlockObject* self, PyObject*) {
  // Hands ownership away (the block now belongs to whoever we told about it).
  self->owned = 0;
  Py_RETURN_NONE;
}

PyGetSetDef Block_getset[] = {
    {"offset", reinterpret_cast<getter>(Block_get_offset), nullptr, "block offset", nullptr},
    {"nbytes", reinterpret_cast<getter>(Block_get_nbytes), nullptr, "bytes", nullptr},
    {"arena", reinterpret_cast<getter>(Block_get_arena), nullptr, "the Arena", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};
PyMethodDef Block_methods[] = {
    {"release", reinterpret_cast<PyCFunction>(Block_release), METH_NOARGS, "stop owning the block"},
    {nullptr, nullptr, 0, nullptr}};
PyBufferProcs Block_as_buffer = {reinterpret_cast<getbufferproc>(Block_getbuffer), nullptr};
PyTypeObject BlockType = {PyVarObject_HEAD_INIT(nullptr, 0)};

}  // namespace

namespace shoal_native {

shoal::Arena* ArenaOf(PyObject* obj) {
  if (!PyObject_TypeCheck(obj, &ArenaType)) return nullptr;
  return reinterpret_cast<ArenaObject*>(obj)->arena;
}

bool AddArenaTypes(PyObject* m) {
  ArenaType.tp_name = "shoal._native.Arena";
  ArenaType.tp_basicsize = sizeof(ArenaObject);
  ArenaType.tp_flags = Py_TPFLAGS_DEFAULT;
  ArenaType.tp_dealloc = reinterpret_cast<destructor>(Arena_dealloc);
  ArenaType.tp_methods = Arena_methods;
  ArenaType.tp_getset = Arena_getset;
  ArenaType.tp_as_buffer = &Arena_as_buffer;
  ArenaType.tp_doc = "a shared-memory arena with its allocator";
  if (PyType_Ready(&ArenaType) < 0) return false;

  BlockType.tp_name = "shoal._native.Block";
  BlockType.tp_basicsize = sizeof(BlockObject);
  BlockType.tp_flags = Py_TPFLAGS_DEFAULT;
  BlockType.tp_new = Block_new;
  BlockType.tp_weaklistoffset = offsetof(BlockObject, weakrefs);
  BlockType.tp_dealloc = reinterpret_cast<destructor>(Block_dealloc);
  BlockType.tp_getset = Block_getset;
  BlockType.tp_methods = Block_methods;
  BlockType.tp_as_buffer = &Block_as_buffer;
  BlockType.tp_doc = "Block(arena, offset, nbytes, owned=True): bytes of an arena";
  if (PyType_Ready(&BlockType) < 0) return false;

  Py_INCREF(&ArenaType);
  Py_INCREF(&BlockType);
  PyModule_AddObject(m, "Arena", reinterpret_cast<PyObject*>(&ArenaType));
  PyModule_AddObject(m, "Block", reinterpret_cast<PyObject*>(&BlockType));
  g_arena_full = AddException(m, "ArenaFullError", PyExc_MemoryError);
  return g_arena_full != nullptr;
}

}  // namespace shoal_native
