// Makes the operator library importable as the Python module lavise_fast._C;
// importing it runs the TORCH_LIBRARY registrations. Built by setup.py only.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}
