"""Prints this Python's static library (LIBPL/LIBRARY, for shoal-worker-static) on the first
line and the libraries it needs on the second; CMakeLists.txt runs it."""
import os
import sysconfig

v = sysconfig.get_config_var
print(os.path.join(v("LIBPL") or "", v("LIBRARY") or ""))
print(" ".join(dict.fromkeys(" ".join(v(k) or "" for k in ("LIBS", "SYSLIBS", "MODLIBS")).split())))
