# Finds the Python interpreter that can `import torch` and makes it overridable:
#   cmake -DSHOAL_PYTHON=/path/to/python3 ...   (or the SHOAL_PYTHON environment variable)
# The pyenv `python3` first on PATH on the development machines has no torch, so the
# search tries the candidates in order and keeps the first that imports torch.
set(_shoal_py_candidates)
if(DEFINED ENV{SHOAL_PYTHON})
  list(APPEND _shoal_py_candidates "$ENV{SHOAL_PYTHON}")
endif()
list(APPEND _shoal_py_candidates /usr/bin/python3)
find_program(_shoal_path_python NAMES python3 python NO_CACHE)
if(_shoal_path_python)
  list(APPEND _shoal_py_candidates "${_shoal_path_python}")
endif()

if(NOT SHOAL_PYTHON)
  foreach(_cand IN LISTS _shoal_py_candidates)
    if(EXISTS "${_cand}")
      execute_process(COMMAND "${_cand}" -c "import torch"
        RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
      if(_rc EQUAL 0)
        set(SHOAL_PYTHON "${_cand}" CACHE FILEPATH "Python interpreter with torch")
        break()
      endif()
    endif()
  endforeach()
endif()
if(NOT SHOAL_PYTHON)
  message(FATAL_ERROR "shoal: no Python interpreter that can `import torch` was found "
    "(tried: ${_shoal_py_candidates}). Install python3-torch (scripts/setup.sh does) "
    "or pass -DSHOAL_PYTHON=/path/to/python3.")
endif()
message(STATUS "shoal: Python with torch: ${SHOAL_PYTHON}")

set(Python3_EXECUTABLE "${SHOAL_PYTHON}")
find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Embed Development.Module)

execute_process(COMMAND "${SHOAL_PYTHON}" -c
  "import torch, torch.utils; print(torch.utils.cmake_prefix_path, end='')"
  OUTPUT_VARIABLE SHOAL_TORCH_CMAKE_PREFIX)
execute_process(COMMAND "${SHOAL_PYTHON}" -c "import torch; print(torch.__version__, end='')"
  OUTPUT_VARIABLE SHOAL_TORCH_VERSION)
message(STATUS "shoal: torch ${SHOAL_TORCH_VERSION}")
