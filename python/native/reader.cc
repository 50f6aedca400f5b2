// shoal._native's FrameReader: the reading side of the Python client's connection, the C++
// client's own (protocol/channel.h's RecvFrame: frames, received fds, polling before
// sleeping), so that the two clients read replies with one definition.
//
//   FrameReader(fd)          -> reads socket `fd` (blocking; the caller keeps it open)
//   reader.read(timeout)     -> the next frame's body (bytes). timeout: seconds, None for no
//                               limit, <= 0 for only what has come. TimeoutError when none
//                               came in time (a frame read in part stays for the next call),
//                               ConnectionError at EOF, OSError otherwise
//   reader.fds_held()        -> received descriptors not yet taken
//   reader.take_fds(n)       -> the n oldest of them (a list of ints; the caller owns them)
//   reader.close_fds()       -> closes those not taken
// Thread-safety: one thread reads at a time (the connection's reading role); a mutex keeps
// a second from corrupting the buffer. read releases the GIL while it waits, and runs the
// Python signal handlers when a signal interrupts the wait (Ctrl-C stops a waiting client).
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "python/native/native.h"

namespace {

struct FrameReaderObject {
  PyObject_HEAD
  int fd;
  std::mutex* mu;               // held by the reading thread for the whole read
  shoal::FrameReader* frames;   // bytes of a frame not yet whole. GUARDED_BY(mu)
  std::vector<int>* fds;        // received, not yet taken. GUARDED_BY(mu)
};

PyObject* FrameReader_new(PyTypeObject* type, PyObject* args, PyObject*) {
  int fd;
  if (!PyArg_ParseTuple(args, "i", &fd)) return nullptr;
  auto* self = reinterpret_cast<FrameReaderObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->fd = fd;
  self->mu = new std::mutex;
  self->frames = new shoal::FrameReader;
  self->fds = new std::vector<int>;
  return reinterpret_cast<PyObject*>(self);
}

void FrameReader_dealloc(FrameReaderObject* self) {
  shoal::CloseAll(self->fds);
  delete self->fds;
  delete self->frames;
  delete self->mu;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* FrameReader_read(FrameReaderObject* self, PyObject* args) {
  PyObject* timeout = Py_None;
  if (!PyArg_ParseTuple(args, "|O", &timeout)) return nullptr;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout != Py_None) {
    double s = PyFloat_AsDouble(timeout);
    if (s == -1.0 && PyErr_Occurred()) return nullptr;
    auto now = std::chrono::steady_clock::now();
    deadline = s <= 0 ? now : now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                         std::chrono::duration<double>(s));
  }
  shoal::Result<std::string> body = shoal::Status::Ok();
  for (;;) {
    bool interrupted = false;
    Py_BEGIN_ALLOW_THREADS {
      std::lock_guard<std::mutex> hold(*self->mu);
      body = shoal::RecvFrameUntilSignal(self->fd, self->frames, self->fds, deadline, &interrupted);
    }
    Py_END_ALLOW_THREADS if (!interrupted) break;
    // A signal: its Python handler runs now (Ctrl-C raises KeyboardInterrupt here, as a
    // blocking socket read would); a frame read in part stays for the next read.
    if (PyErr_CheckSignals() < 0) return nullptr;
  }
  if (body.ok()) return PyBytes_FromStringAndSize(body->data(), static_cast<Py_ssize_t>(body->size()));
  const std::string& why = body.status().message();
  switch (body.status().code()) {
    case shoal::Code::kTimeout:
      PyErr_SetString(PyExc_TimeoutError, why.c_str());
      break;
    case shoal::Code::kUnavailable:
      PyErr_SetString(PyExc_ConnectionError, ("shoald closed the connection (" + why + ")").c_str());
      break;
    default:
      PyErr_SetString(PyExc_OSError, why.c_str());
  }
  return nullptr;
}

PyObject* FrameReader_fds_held(FrameReaderObject* self, PyObject*) {
  std::lock_guard<std::mutex> hold(*self->mu);
  return PyLong_FromSize_t(self->fds->size());
}

PyObject* FrameReader_take_fds(FrameReaderObject* self, PyObject* args) {
  Py_ssize_t n;
  if (!PyArg_ParseTuple(args, "n", &n)) return nullptr;
  std::lock_guard<std::mutex> hold(*self->mu);
  if (n < 0 || static_cast<size_t>(n) > self->fds->size()) {
    return PyErr_Format(PyExc_ValueError, "take_fds(%zd): %zu descriptors held", n, self->fds->size());
  }
  PyObject* out = PyList_New(n);
  if (out == nullptr) return nullptr;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* fd = PyLong_FromLong((*self->fds)[i]);
    if (fd == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyList_SET_ITEM(out, i, fd);
  }
  self->fds->erase(self->fds->begin(), self->fds->begin() + n);
  return out;
}

PyObject* FrameReader_close_fds(FrameReaderObject* self, PyObject*) {
  std::lock_guard<std::mutex> hold(*self->mu);
  shoal::CloseAll(self->fds);
  Py_RETURN_NONE;
}

PyMethodDef FrameReader_methods[] = {
    {"read", reinterpret_cast<PyCFunction>(FrameReader_read), METH_VARARGS,
     "read(timeout=None) -> bytes: the next frame's body (TimeoutError, ConnectionError at EOF, OSError)"},
    {"fds_held", reinterpret_cast<PyCFunction>(FrameReader_fds_held), METH_NOARGS,
     "fds_held() -> int: received descriptors not yet taken"},
    {"take_fds", reinterpret_cast<PyCFunction>(FrameReader_take_fds), METH_VARARGS,
     "take_fds(n) -> list: the n oldest received descriptors (the caller closes them)"},
    {"close_fds", reinterpret_cast<PyCFunction>(FrameReader_close_fds), METH_NOARGS,
     "close_fds(): closes the received descriptors not taken"},
    {nullptr, nullptr, 0, nullptr}};
PyTypeObject FrameReaderType = {PyVarObject_HEAD_INIT(nullptr, 0)};

}  // namespace

namespace shoal_native {

bool AddFrameReader(PyObject* m) {
  return AddType(m, &FrameReaderType,
                 TypeSpec{"shoal._native.FrameReader", sizeof(FrameReaderObject), FrameReader_new,
                          reinterpret_cast<destructor>(FrameReader_dealloc), FrameReader_methods, nullptr,
                          "FrameReader(fd): the reading side of a client's connection (protocol/channel.h)"});
}

}  // namespace shoal_native
