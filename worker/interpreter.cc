#include "worker/interpreter.h"

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <unistd.h>

#include <memory>

namespace shoal {

namespace {
// The current Python exception as text (with traceback when available); clears it.
std::string FetchPythonError() {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  std::string out = "unknown Python error";
  PyObject* tbmod = PyImport_ImportModule("traceback");
  if (tbmod != nullptr && type != nullptr) {
    PyObject* lines = PyObject_CallMethod(tbmod, "format_exception", "OOO", type, value ? value : Py_None,
                                          tb ? tb : Py_None);
    if (lines != nullptr) {
      PyObject* empty = PyUnicode_FromString("");
      PyObject* joined = PyUnicode_Join(empty, lines);
      if (joined != nullptr) out = PyUnicode_AsUTF8(joined);
      Py_XDECREF(joined);
      Py_XDECREF(empty);
      Py_DECREF(lines);
    }
  }
  PyErr_Clear();
  Py_XDECREF(tbmod);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  return out;
}
}  // namespace

Result<std::unique_ptr<Interpreter>> Interpreter::Start(const std::string& python_dir) {
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;  // a worker dies by the default action of its signals
  config.parse_argv = 0;
  PyStatus st = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(st)) {
    return Status::Internal(std::string("Python failed to initialise: ") + (st.err_msg ? st.err_msg : "?"));
  }
  if (!python_dir.empty()) {
    PyObject* sys_path = PySys_GetObject("path");  // borrowed
    PyObject* dir = PyUnicode_FromString(python_dir.c_str());
    PyList_Insert(sys_path, 0, dir);
    Py_DECREF(dir);
  }

  PyObject* mod = PyImport_ImportModule("shoal._worker");
  if (mod == nullptr) {
    return Status::Internal("cannot import shoal._worker (from " + (python_dir.empty() ? "sys.path" : python_dir) +
                            "):\n" + FetchPythonError());
  }
  std::unique_ptr<Interpreter> it(new Interpreter());
  it->module_ = mod;
  return it;
}

Status Interpreter::CreateRunner(int slot) {
  PyObject* runner = PyObject_CallMethod(static_cast<PyObject*>(module_), "Runner", "i", slot);
  if (runner == nullptr) return Status::Internal("shoal._worker.Runner failed:\n" + FetchPythonError());
  PyObject* handle = PyObject_GetAttrString(runner, "handle");
  if (handle == nullptr) {
    Py_DECREF(runner);
    return Status::Internal("Runner has no handle():\n" + FetchPythonError());
  }
  runner_ = runner;
  handle_ = handle;
  return Status::Ok();
}

Status Interpreter::Freeze() {
  PyObject* gc = PyImport_ImportModule("gc");
  PyObject* r = gc ? PyObject_CallMethod(gc, "collect", nullptr) : nullptr;
  Py_XDECREF(r);
  r = gc ? PyObject_CallMethod(gc, "freeze", nullptr) : nullptr;
  Py_XDECREF(gc);
  if (r == nullptr) return Status::Internal("gc.freeze failed:\n" + FetchPythonError());
  Py_DECREF(r);
  return Status::Ok();
}

void Interpreter::BeforeFork() { PyOS_BeforeFork(); }
void Interpreter::AfterForkParent() { PyOS_AfterFork_Parent(); }
void Interpreter::AfterForkChild() { PyOS_AfterFork_Child(); }

Interpreter::~Interpreter() {
  // The worker exits with _exit after its loop: finalising torch can hang or crash at
  // exit and buys nothing (the kernel frees everything), so Python is not finalised.
  AcquireGil();
  Py_XDECREF(static_cast<PyObject*>(handle_));
  Py_XDECREF(static_cast<PyObject*>(runner_));
  Py_XDECREF(static_cast<PyObject*>(module_));
}

void Interpreter::ReleaseGil() {
  if (saved_thread_ == nullptr) saved_thread_ = PyEval_SaveThread();
}

void Interpreter::AcquireGil() {
  if (saved_thread_ != nullptr) {
    PyEval_RestoreThread(static_cast<PyThreadState*>(saved_thread_));
    saved_thread_ = nullptr;
  }
}

Result<std::string> Interpreter::Handle(const std::string& body, std::vector<int>* fds) {
  PyObject* fd_list = PyList_New(static_cast<Py_ssize_t>(fds->size()));
  for (size_t i = 0; i < fds->size(); ++i) PyList_SET_ITEM(fd_list, i, PyLong_FromLong((*fds)[i]));
  PyObject* arg = PyBytes_FromStringAndSize(body.data(), static_cast<Py_ssize_t>(body.size()));
  PyObject* res = PyObject_CallFunctionObjArgs(static_cast<PyObject*>(handle_), arg, fd_list, nullptr);
  Py_DECREF(arg);
  // The runner pops the fds its message carries; the rest belong to later messages.
  fds->clear();
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fd_list); ++i) fds->push_back(PyLong_AsLong(PyList_GET_ITEM(fd_list, i)));
  Py_DECREF(fd_list);
  if (res == nullptr) return Status::Internal("runner.handle raised:\n" + FetchPythonError());
  std::string out;
  if (PyBytes_Check(res)) {
    out.assign(PyBytes_AS_STRING(res), static_cast<size_t>(PyBytes_GET_SIZE(res)));
  } else if (res != Py_None) {
    Py_DECREF(res);
    return Status::Internal("runner.handle returned neither bytes nor None");
  }
  Py_DECREF(res);
  return out;
}

}  // namespace shoal
