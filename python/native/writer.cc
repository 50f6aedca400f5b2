// shoal._native's ClientWriter: the writing side of the Python client's connection, the
// C++ client's own (protocol/client_writer.h).
//
//   ClientWriter(fd)            -> writes on a duplicate of socket `fd`
//   writer.send(data, fds=())   -> sends whole frames (fds on the first byte); OSError on failure
//   writer.release(arena, block) queues a dropped result's block; its thread sends it at once
//   writer.stop()               -> sends what is queued and stops (later releases are ignored)
// A Block made with writer=... releases itself through it when it dies
// (python/native/arena.cc).
// Thread-safety: the writer is thread-safe; send releases the GIL while it writes.
#include <vector>

#include "protocol/client_writer.h"
#include "python/native/native.h"

namespace {

struct ClientWriterObject {
  PyObject_HEAD
  shoal::ClientWriter* impl;
};

PyObject* ClientWriter_new(PyTypeObject* type, PyObject* args, PyObject*) {
  int fd;
  if (!PyArg_ParseTuple(args, "i", &fd)) return nullptr;
  auto* self = reinterpret_cast<ClientWriterObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->impl = new shoal::ClientWriter(fd);
  return reinterpret_cast<PyObject*>(self);
}

void ClientWriter_dealloc(ClientWriterObject* self) {
  Py_BEGIN_ALLOW_THREADS delete self->impl;  // joins its thread, which never takes the GIL
  Py_END_ALLOW_THREADS Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* ClientWriter_send(ClientWriterObject* self, PyObject* args) {
  Py_buffer data;
  PyObject* fd_seq = nullptr;
  if (!PyArg_ParseTuple(args, "y*|O", &data, &fd_seq)) return nullptr;
  std::vector<int> fds;
  if (fd_seq != nullptr) {
    PyObject* fast = PySequence_Fast(fd_seq, "send: fds must be a sequence of descriptors");
    if (fast == nullptr) {
      PyBuffer_Release(&data);
      return nullptr;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); ++i) {
      fds.push_back(static_cast<int>(PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i))));
    }
    Py_DECREF(fast);
    if (PyErr_Occurred()) {
      PyBuffer_Release(&data);
      return nullptr;
    }
  }
  shoal::Status st;
  Py_BEGIN_ALLOW_THREADS st = self->impl->Send(
      std::string_view(static_cast<const char*>(data.buf), static_cast<size_t>(data.len)), fds);
  Py_END_ALLOW_THREADS PyBuffer_Release(&data);
  if (!st.ok()) {
    PyErr_SetString(PyExc_OSError, st.message().c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* ClientWriter_release(ClientWriterObject* self, PyObject* args) {
  unsigned long long arena, block;
  if (!PyArg_ParseTuple(args, "KK", &arena, &block)) return nullptr;
  self->impl->Release(arena, block);
  Py_RETURN_NONE;
}

PyObject* ClientWriter_stop(ClientWriterObject* self, PyObject*) {
  Py_BEGIN_ALLOW_THREADS self->impl->Stop();
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

PyMethodDef ClientWriter_methods[] = {
    {"send", reinterpret_cast<PyCFunction>(ClientWriter_send), METH_VARARGS,
     "send(data, fds=()): sends whole frames, fds on the first byte (OSError on failure)"},
    {"release", reinterpret_cast<PyCFunction>(ClientWriter_release), METH_VARARGS,
     "release(arena, block): a dropped result's block, sent back to its worker at once"},
    {"stop", reinterpret_cast<PyCFunction>(ClientWriter_stop), METH_NOARGS,
     "stop(): sends what is queued and stops"},
    {nullptr, nullptr, 0, nullptr}};
PyTypeObject ClientWriterType = {PyVarObject_HEAD_INIT(nullptr, 0)};

}  // namespace

namespace shoal_native {

shoal::ClientWriter* ClientWriterOf(PyObject* obj) {
  if (!PyObject_TypeCheck(obj, &ClientWriterType)) return nullptr;
  return reinterpret_cast<ClientWriterObject*>(obj)->impl;
}

bool AddClientWriter(PyObject* m) {
  return AddType(m, &ClientWriterType,
                 TypeSpec{"shoal._native.ClientWriter", sizeof(ClientWriterObject), ClientWriter_new,
                          reinterpret_cast<destructor>(ClientWriter_dealloc), ClientWriter_methods, nullptr,
                          "ClientWriter(fd): the writing side of a client's connection "
                          "(protocol/client_writer.h)"});
}

}  // namespace shoal_native
