// shoal._native's FrameReader: the reading side of the Python client's connection, the C++
// client's own (protocol/channel.h's RecvFrame: frames, received fds, polling before
// sleeping), so that the two clients read replies with one definition.
//
//   FrameReader(fd)          -> reads a duplicate of socket `fd` (blocking)
//   reader.read(timeout)     -> the next frame's body (bytes). timeout: seconds, None for no
//                               limit, <= 0 for only what has come. TimeoutError when none
//                               came in time (a frame read in part stays for the next call),
//                               ConnectionError at EOF or once closed, OSError otherwise
//   reader.fds_held()        -> received descriptors not yet taken
//   reader.take_fds(n)       -> the n oldest of them (a list of ints; the caller owns them)
//   reader.close()           -> closes its socket and the descriptors not taken; a read
//                               in progress finishes first (shut the socket down to end it)
// Thread-safety: one thread reads at a time (the connection's reading role); a mutex keeps
// a second from corrupting the buffer. read releases the GIL while it waits, and runs the
// Python signal handlers when a signal interrupts the wait or its polling ends (Ctrl-C
// stops a waiting client). fds_held and take_fds raise RuntimeError while another thread
// reads (they never wait for a read with the GIL held).
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
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
  std::mutex* mu;               // held by the reading thread for the whole read
  int fd;                       // our duplicate of the socket; -1 once closed. GUARDED_BY(mu)
  shoal::FrameReader* frames;   // bytes of a frame not yet whole. GUARDED_BY(mu)
  std::vector<int>* fds;        // received, not yet taken. GUARDED_BY(mu)
};

// Timeouts beyond this many seconds are no limit (and no overflow of a time_point).
constexpr double kLongestTimeoutS = 1e9;

PyObject* FrameReader_new(PyTypeObject* type, PyObject* args, PyObject*) {
  int fd;
  if (!PyArg_ParseTuple(args, "i", &fd)) return nullptr;
  // A duplicate: the reader's descriptor stays this socket until close(), whatever the
  // caller does with its own number.
  int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) return PyErr_SetFromErrno(PyExc_OSError);
  auto* self = reinterpret_cast<FrameReaderObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) {
    close(own);
    return nullptr;
  }
  self->mu = new std::mutex;
  self->fd = own;
  self->frames = new shoal::FrameReader;
  self->fds = new std::vector<int>;
  return reinterpret_cast<PyObject*>(self);
}

void FrameReader_dealloc(FrameReaderObject* self) {
  if (self->fd >= 0) close(self->fd);
  shoal::CloseAll(self->fds);
  delete self->fds;
  delete self->frames;
  delete self->mu;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* RaiseFor(const shoal::Status& st) {
  const std::string& why = st.message();
  switch (st.code()) {
    case shoal::Code::kTimeout:
      PyErr_SetString(PyExc_TimeoutError, why.c_str());
      break;
    case shoal::Code::kUnavailable:
      PyErr_SetString(PyExc_ConnectionError, ("shoald closed the connection (" + why + ")").c_str());
      break;
    case shoal::Code::kBadRequest:  // the stream itself is bad: a frame length it cannot take
      PyErr_SetString(PyExc_OSError, ("shoald sent what this client cannot read: " + why).c_str());
      break;
    default:
      PyErr_SetString(PyExc_OSError, why.c_str());
  }
  return nullptr;
}

PyObject* FrameReader_read(FrameReaderObject* self, PyObject* args) {
  PyObject* timeout = Py_None;
  if (!PyArg_ParseTuple(args, "|O", &timeout)) return nullptr;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout != Py_None) {
    double s = PyFloat_AsDouble(timeout);
    if (s == -1.0 && PyErr_Occurred()) return nullptr;
    if (std::isnan(s)) return PyErr_Format(PyExc_ValueError, "read: timeout is NaN");
    auto now = std::chrono::steady_clock::now();
    if (s <= 0) {
      deadline = now;
    } else if (s < kLongestTimeoutS) {
      deadline = now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
    }
  }
  shoal::Result<std::string> body = shoal::Status::Ok();
  bool spin = true, closed = false;
  for (;;) {
    bool interrupted = false;
    Py_BEGIN_ALLOW_THREADS {
      std::lock_guard<std::mutex> hold(*self->mu);
      closed = self->fd < 0;
      if (!closed) body = shoal::RecvFrameUntilSignal(self->fd, self->frames, self->fds, deadline, spin, &interrupted);
    }
    Py_END_ALLOW_THREADS if (closed) {
      PyErr_SetString(PyExc_ConnectionError, "the connection to shoald is closed");
      return nullptr;
    }
    if (!interrupted) break;
    // A signal interrupted the wait, or polling ended (a signal then interrupts nothing):
    // the Python handlers run now (Ctrl-C raises KeyboardInterrupt here, as a blocking
    // socket read would), then the wait goes on without polling again. A frame read in
    // part stays for the next read.
    spin = false;
    if (PyErr_CheckSignals() < 0) return nullptr;
  }
  if (body.ok()) return PyBytes_FromStringAndSize(body->data(), static_cast<Py_ssize_t>(body->size()));
  return RaiseFor(body.status());
}

// The mutex without waiting: a read in progress holds it, maybe for long, and waiting here
// with the GIL held would stop every Python thread meanwhile.
bool TryHold(FrameReaderObject* self, std::unique_lock<std::mutex>* hold, const char* what) {
  *hold = std::unique_lock<std::mutex>(*self->mu, std::try_to_lock);
  if (hold->owns_lock()) return true;
  PyErr_Format(PyExc_RuntimeError, "%s: another thread is reading this connection", what);
  return false;
}

PyObject* FrameReader_fds_held(FrameReaderObject* self, PyObject*) {
  std::unique_lock<std::mutex> hold;
  if (!TryHold(self, &hold, "fds_held")) return nullptr;
  return PyLong_FromSize_t(self->fds->size());
}

PyObject* FrameReader_take_fds(FrameReaderObject* self, PyObject* args) {
  Py_ssize_t n;
  if (!PyArg_ParseTuple(args, "n", &n)) return nullptr;
  std::unique_lock<std::mutex> hold;
  if (!TryHold(self, &hold, "take_fds")) return nullptr;
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

PyObject* FrameReader_close(FrameReaderObject* self, PyObject*) {
  Py_BEGIN_ALLOW_THREADS {
    std::lock_guard<std::mutex> hold(*self->mu);  // after a read in progress
    if (self->fd >= 0) close(self->fd);
    self->fd = -1;
    shoal::CloseAll(self->fds);
  }
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

PyMethodDef FrameReader_methods[] = {
    {"read", reinterpret_cast<PyCFunction>(FrameReader_read), METH_VARARGS,
     "read([timeout]) -> bytes: the next frame's body (TimeoutError, ConnectionError at EOF, OSError)"},
    {"fds_held", reinterpret_cast<PyCFunction>(FrameReader_fds_held), METH_NOARGS,
     "fds_held() -> int: received descriptors not yet taken"},
    {"take_fds", reinterpret_cast<PyCFunction>(FrameReader_take_fds), METH_VARARGS,
     "take_fds(n) -> list: the n oldest received descriptors (the caller closes them)"},
    {"close", reinterpret_cast<PyCFunction>(FrameReader_close), METH_NOARGS,
     "close(): closes the reader's socket and the received descriptors not taken"},
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
