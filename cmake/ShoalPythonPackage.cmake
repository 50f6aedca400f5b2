# The Python package in the build tree: build/python/shoal = python/shoal/*.py (copied on
# every build) + the _native extension. Tests, the worker and the `shoal` CLI use it there.
set(SHOAL_PY_BUILD_DIR ${CMAKE_BINARY_DIR}/python)
file(GLOB SHOAL_PY_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/python/shoal/*.py)
set(_shoal_py_outputs)
foreach(src ${SHOAL_PY_SOURCES})
  get_filename_component(fname ${src} NAME)
  set(dst ${SHOAL_PY_BUILD_DIR}/shoal/${fname})
  add_custom_command(OUTPUT ${dst} COMMAND ${CMAKE_COMMAND} -E copy ${src} ${dst} DEPENDS ${src})
  list(APPEND _shoal_py_outputs ${dst})
endforeach()
add_custom_target(shoal_python ALL DEPENDS ${_shoal_py_outputs})

Python3_add_library(shoal_native MODULE python/native/native.cc python/native/arena.cc
  python/native/archive.cc python/native/output.cc python/native/writer.cc python/native/reader.cc python/native/gpu_memory.cc
  python/native/dlpack.cc)
target_link_libraries(shoal_native PRIVATE shoal_core)
target_compile_options(shoal_native PRIVATE -Wall -Wextra -Wno-missing-field-initializers)  # CPython type objects
set_target_properties(shoal_native PROPERTIES OUTPUT_NAME _native
  LIBRARY_OUTPUT_DIRECTORY ${SHOAL_PY_BUILD_DIR}/shoal)

# The `shoal` command: the CLI, run by the interpreter that has torch.
file(GENERATE OUTPUT ${CMAKE_BINARY_DIR}/bin/shoal CONTENT
"#!${SHOAL_PYTHON}
import sys
sys.path.insert(0, '${SHOAL_PY_BUILD_DIR}')
from shoal.cli import main
sys.exit(main())
" FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
