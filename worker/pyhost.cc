// libshoal_pyhost.so: the Python side of a worker's interpreter, behind the C interface
// of worker/pyhost.h. One copy of this library = one CPython runtime.
//
// All model semantics live in Python (python/shoal/_worker.py: archive loading, tensors
// over arena memory, running the model); this file starts the interpreter, imports that
// module and hands it each message.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "shm/output_release_api.h"
#include "worker/pyhost.h"

namespace {

PyObject* g_module = nullptr;  // shoal._worker
PyObject* g_handle = nullptr;  // runner.handle
const ShoalOutputReleaseApi* g_release = nullptr;  // frees runner.outputs' blocks; kept with its capsule
std::string g_versions;
ShoalPrepareExtensionFn g_prepare = nullptr;
void* g_prepare_ctx = nullptr;
thread_local PyThreadState* t_saved = nullptr;  // this thread's state while the GIL is released

char* Dup(const std::string& s) {
  char* p = static_cast<char*>(malloc(s.size() + 1));
  memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

int Fail(char** error, const std::string& message) {
  if (error != nullptr) *error = Dup(message);
  return -1;
}

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

// _shoal_host.private_extension(origin, fullname) -> path of this interpreter's copy.
PyObject* PrivateExtension(PyObject*, PyObject* args) {
  const char* origin;
  const char* fullname;
  if (!PyArg_ParseTuple(args, "ss", &origin, &fullname)) return nullptr;
  char* copy = nullptr;
  char* error = nullptr;
  int rc;
  Py_BEGIN_ALLOW_THREADS  // patchelf runs for a while; other threads of this runtime may go on
  rc = g_prepare(g_prepare_ctx, origin, fullname, &copy, &error);
  Py_END_ALLOW_THREADS
  if (rc != 0) {
    PyErr_Format(PyExc_ImportError, "cannot make this interpreter's private copy of %s: %s", origin,
                 error ? error : "?");
    free(error);
    return nullptr;
  }
  PyObject* out = PyUnicode_FromString(copy);
  free(copy);
  return out;
}

PyMethodDef kHostMethods[] = {
    {"private_extension", PrivateExtension, METH_VARARGS, "path of this interpreter's copy of an extension"},
    {nullptr, nullptr, 0, nullptr}};
PyModuleDef kHostModule = {PyModuleDef_HEAD_INIT, "_shoal_host", "shoal-worker's services to its interpreters",
                           -1, kHostMethods, nullptr, nullptr, nullptr, nullptr};
PyObject* InitHostModule() { return PyModule_Create(&kHostModule); }

// Runs python/shoal/_copies.py's install() without importing the shoal package (whose
// imports would load extension modules before the hook is in place).
int InstallCopyHooks(int index, char** error) {
  std::string code =
      "import importlib.util as _u\n"
      "_s = _u.find_spec('shoal')\n"
      "if _s is None: raise ImportError('the shoal package is not on sys.path')\n"
      "_s = _u.spec_from_file_location('_shoal_copies', _s.submodule_search_locations[0] + '/_copies.py')\n"
      "_m = _u.module_from_spec(_s)\n"
      "_s.loader.exec_module(_m)\n"
      "_m.install(first=" + std::string(index == 0 ? "True" : "False") + ")\n"
      "del _u, _s, _m\n";
  PyObject* main = PyImport_AddModule("__main__");  // borrowed
  PyObject* globals = PyModule_GetDict(main);       // borrowed
  PyObject* r = PyRun_String(code.c_str(), Py_file_input, globals, globals);
  if (r == nullptr) return Fail(error, "installing the private-copy import hooks failed:\n" + FetchPythonError());
  Py_DECREF(r);
  return 0;
}

int Start(const char* python_dir, int index, ShoalPrepareExtensionFn prepare, void* ctx, char** error) {
  g_prepare = prepare;
  g_prepare_ctx = ctx;
  if (prepare != nullptr && PyImport_AppendInittab("_shoal_host", InitHostModule) != 0) {
    return Fail(error, "cannot register the _shoal_host module");
  }
#ifdef SHOAL_HOSTED_BY_PYTHON
  // shoal-worker-py: the python3 executable started the interpreter (worker/python_host.cc).
  if (!Py_IsInitialized()) return Fail(error, "shoal._worker_host runs inside a running Python only");
#else
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;  // a worker dies by the default action of its signals
  config.parse_argv = 0;
  PyStatus st = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(st)) {
    return Fail(error, std::string("Python failed to initialise: ") + (st.err_msg ? st.err_msg : "?"));
  }
#endif
  std::string dir = python_dir != nullptr ? python_dir : "";
  if (!dir.empty()) {
    PyObject* sys_path = PySys_GetObject("path");  // borrowed
    PyObject* d = PyUnicode_FromString(dir.c_str());
    PyList_Insert(sys_path, 0, d);
    Py_DECREF(d);
  }
  if (prepare != nullptr && InstallCopyHooks(index, error) != 0) return -1;
  g_module = PyImport_ImportModule("shoal._worker");
  if (g_module == nullptr) {
    return Fail(error, "cannot import shoal._worker (from " + (dir.empty() ? std::string("sys.path") : dir) +
                           "):\n" + FetchPythonError());
  }
  g_versions = std::string("Python ") + Py_GetVersion();
  g_versions = g_versions.substr(0, g_versions.find(' ', 7));
  if (PyObject* torch = PyImport_ImportModule("torch")) {
    PyObject* v = PyObject_GetAttrString(torch, "__version__");
    if (v != nullptr && PyUnicode_Check(v)) g_versions += std::string(", torch ") + PyUnicode_AsUTF8(v);
    Py_XDECREF(v);
    Py_DECREF(torch);
  }
  PyErr_Clear();
  return 0;
}

const char* Versions() { return g_versions.c_str(); }

int CreateRunner(int slot, int interp, char** error) {
  PyObject* runner = PyObject_CallMethod(g_module, "Runner", "ii", slot, interp);
  if (runner == nullptr) return Fail(error, "shoal._worker.Runner failed:\n" + FetchPythonError());
  g_handle = PyObject_GetAttrString(runner, "handle");
  PyObject* outputs = PyObject_GetAttrString(runner, "outputs");
  Py_DECREF(runner);  // the bound method keeps it alive
  if (g_handle == nullptr) return Fail(error, "Runner has no handle():\n" + FetchPythonError());
  // Releases are the worker loop's, in C++: the capsule (never freed) keeps the arenas.
  PyObject* capsule = outputs != nullptr ? PyObject_CallMethod(outputs, "release_api", nullptr) : nullptr;
  Py_XDECREF(outputs);
  if (capsule == nullptr) return Fail(error, "Runner.outputs has no release_api():\n" + FetchPythonError());
  auto* api = static_cast<const ShoalOutputReleaseApi*>(PyCapsule_GetPointer(capsule, kShoalOutputReleaseCapsule));
  if (api == nullptr || api->version != kShoalOutputReleaseApiVersion) {
    PyErr_Clear();
    return Fail(error, "shoal._native is not of this shoal-worker's build (its OutputArenas.release_api differs); "
                       "rebuild or reinstall shoal");
  }
  g_release = api;
  return 0;
}

int Release(uint64_t arena, const uint64_t* blocks, size_t n, char* notice, size_t cap, size_t* len) {
  return g_release->release(g_release->arenas, arena, blocks, n, notice, cap, len);
}

int Freeze(char** error) {
  PyObject* gc = PyImport_ImportModule("gc");
  PyObject* r = gc ? PyObject_CallMethod(gc, "collect", nullptr) : nullptr;
  Py_XDECREF(r);
  r = gc ? PyObject_CallMethod(gc, "freeze", nullptr) : nullptr;
  Py_XDECREF(gc);
  if (r == nullptr) return Fail(error, "gc.freeze failed:\n" + FetchPythonError());
  Py_DECREF(r);
  return 0;
}

int SelfTest(char** error) {
  PyObject* r = PyObject_CallMethod(g_module, "self_test", nullptr);
  if (r == nullptr) return Fail(error, "self test failed:\n" + FetchPythonError());
  Py_DECREF(r);
  return 0;
}

int ImportFolders(char** paths, char** error) {
  PyObject* mod = PyImport_ImportModule("shoal._sandbox");
  PyObject* r = mod ? PyObject_CallMethod(mod, "read_paths", nullptr) : nullptr;
  Py_XDECREF(mod);
  if (r == nullptr || !PyUnicode_Check(r)) {
    Py_XDECREF(r);
    return Fail(error, "shoal._sandbox.read_paths failed:\n" + FetchPythonError());
  }
  *paths = Dup(PyUnicode_AsUTF8(r));
  Py_DECREF(r);
  return 0;
}

int EnterSandbox(const char* tmp_dir, int confined, const char* env, char** error) {
  PyObject* mod = PyImport_ImportModule("shoal._sandbox");
  PyObject* r = mod ? PyObject_CallMethod(mod, "enter", "sis", tmp_dir, confined, env) : nullptr;
  Py_XDECREF(mod);
  if (r == nullptr) return Fail(error, "shoal._sandbox.enter failed:\n" + FetchPythonError());
  Py_DECREF(r);
  return 0;
}

void ReleaseGil() {
  if (t_saved == nullptr) t_saved = PyEval_SaveThread();
}

void AcquireGil() {
  if (t_saved != nullptr) {
    PyEval_RestoreThread(t_saved);
    t_saved = nullptr;
  }
}

void AttachThread() {
  // A thread state of its own in this runtime; kept for the thread's life.
  (void)PyGILState_Ensure();
}

int Handle(const char* body, size_t len, int* fds, size_t* nfds, char** reply, size_t* reply_len, int* out_fds,
           size_t* n_out, char** error) {
  size_t out_cap = *n_out;
  *n_out = 0;
  PyObject* fd_list = PyList_New(static_cast<Py_ssize_t>(*nfds));
  for (size_t i = 0; i < *nfds; ++i) PyList_SET_ITEM(fd_list, i, PyLong_FromLong(fds[i]));
  PyObject* arg = PyBytes_FromStringAndSize(body, static_cast<Py_ssize_t>(len));
  PyObject* res = PyObject_CallFunctionObjArgs(g_handle, arg, fd_list, nullptr);
  Py_DECREF(arg);
  // The runner pops the fds its message carries; the rest belong to later messages.
  *nfds = static_cast<size_t>(PyList_GET_SIZE(fd_list));
  for (size_t i = 0; i < *nfds; ++i) fds[i] = static_cast<int>(PyLong_AsLong(PyList_GET_ITEM(fd_list, i)));
  Py_DECREF(fd_list);
  if (res == nullptr) return Fail(error, "runner.handle raised:\n" + FetchPythonError());
  *reply = nullptr;
  *reply_len = 0;
  // (reply, [fds]): a job's reply that announces new output arenas.
  if (PyTuple_Check(res) && PyTuple_GET_SIZE(res) == 2 && PyList_Check(PyTuple_GET_ITEM(res, 1))) {
    PyObject* list = PyTuple_GET_ITEM(res, 1);
    if (static_cast<size_t>(PyList_GET_SIZE(list)) > out_cap) {
      Py_DECREF(res);
      return Fail(error, "runner.handle attached more fds than a frame carries");
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) out_fds[(*n_out)++] = static_cast<int>(PyLong_AsLong(PyList_GET_ITEM(list, i)));
    PyObject* body_obj = Py_NewRef(PyTuple_GET_ITEM(res, 0));
    Py_DECREF(res);
    res = body_obj;
  }
  if (PyBytes_Check(res)) {
    *reply_len = static_cast<size_t>(PyBytes_GET_SIZE(res));
    *reply = static_cast<char*>(malloc(*reply_len + 1));
    memcpy(*reply, PyBytes_AS_STRING(res), *reply_len);
  } else if (res != Py_None) {
    Py_DECREF(res);
    return Fail(error, "runner.handle returned neither bytes nor None");
  }
  Py_DECREF(res);
  return 0;
}

const ShoalPyhostApi kApi = {
    kShoalPyhostAbi, Start,       Versions,   CreateRunner, Freeze, PyOS_BeforeFork, PyOS_AfterFork_Parent,
    PyOS_AfterFork_Child, ReleaseGil, AcquireGil, AttachThread, SelfTest, Handle, ImportFolders, EnterSandbox,
    Release,
};

}  // namespace

extern "C" __attribute__((visibility("default"))) const ShoalPyhostApi* shoal_pyhost_api() { return &kApi; }
