// shoal._worker_host: the worker's command line (worker/worker_main.h) as an extension
// module, so that the `python3` executable can be the worker process (shoal-worker-py, a
// script CMake writes):
//
//   #!/usr/bin/python3
//   if __name__ == '__main__': from shoal import _worker_host; _worker_host.main(sys.argv)
//
// The interpreter python3 started is the worker's only one (worker/pyhost.cc adopts it:
// SHOAL_HOSTED_BY_PYTHON: pyhost.cc is compiled in). Signals get back the default actions an
// embedded interpreter leaves them (python3 ignores SIGPIPE and SIGXFSZ and handles
// SIGINT): a worker dies by the default action of its signals, as shoal-worker does.
// Threading: main() is called by Python's main thread with the GIL held.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>

#include <string>
#include <vector>

#include "worker/worker_main.h"

namespace {

PyObject* Main(PyObject*, PyObject* args) {
  PyObject* list;
  if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &list)) return nullptr;
  std::vector<std::string> words;
  for (Py_ssize_t i = 0; i < PyList_Size(list); ++i) {
    PyObject* bytes = PyUnicode_EncodeFSDefault(PyList_GetItem(list, i));  // argv's own bytes back
    if (bytes == nullptr) return nullptr;
    words.emplace_back(PyBytes_AsString(bytes), PyBytes_Size(bytes));
    Py_DECREF(bytes);
  }
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  for (int sig : {SIGINT, SIGPIPE, SIGXFSZ}) signal(sig, SIG_DFL);
  int rc = shoal::WorkerMain(static_cast<int>(words.size()), argv.data());
  // Back from a start-up check or a bad command line, maybe with the GIL given away (an
  // interpreter that started): the process ends here, as shoal-worker's would, without
  // finalising Python.
  fflush(stdout);
  fflush(stderr);
  _exit(rc);
}

PyMethodDef kMethods[] = {{"main", Main, METH_VARARGS, "runs shoal-worker's command line (argv[0] first); never returns"},
                          {nullptr, nullptr, 0, nullptr}};
PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_worker_host", "shoal-worker hosted by the python3 executable", -1,
                       kMethods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__worker_host() { return PyModule_Create(&kModule); }
