# `cmake --install` and the .deb (CPack): daemons, CLI, C++ client library + headers +
# CMake package config, Python package, systemd units, sysusers entry, configuration,
# model repository, manual pages.
# A system service: install under /usr (so /etc and /var for configuration and state)
# unless the user chose a prefix.
if(CMAKE_INSTALL_PREFIX_INITIALIZED_TO_DEFAULT)
  set(CMAKE_INSTALL_PREFIX /usr CACHE PATH "install prefix" FORCE)
endif()
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

execute_process(COMMAND "${SHOAL_PYTHON}" -c
  "import sys; print('lib/python3/dist-packages' if any(p.endswith('/dist-packages') and p.startswith('/usr/lib/python3') for p in sys.path) else 'lib/python%d.%d/site-packages' % sys.version_info[:2], end='')"
  OUTPUT_VARIABLE _shoal_pydir_default)
set(SHOAL_PYTHON_INSTALL_DIR "${_shoal_pydir_default}" CACHE STRING
  "where the shoal Python package goes, relative to the prefix")
set(SHOAL_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE STRING "systemd units, relative to the prefix")

install(TARGETS shoald shoal-worker shoal-http RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# shoal-worker-py finds the shoal package (and its _worker_host) on the interpreter's own path.
shoal_worker_py_script(${CMAKE_BINARY_DIR}/install/shoal-worker-py "")
install(PROGRAMS ${CMAKE_BINARY_DIR}/install/shoal-worker-py DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS shoal_pyhost LIBRARY DESTINATION lib/shoal)

# The installed CLI finds the shoal package on the interpreter's own path.
file(GENERATE OUTPUT ${CMAKE_BINARY_DIR}/install/shoal CONTENT
"#!${SHOAL_PYTHON}
import sys
from shoal.cli import main
sys.exit(main())
")
install(PROGRAMS ${CMAKE_BINARY_DIR}/install/shoal DESTINATION ${CMAKE_INSTALL_BINDIR})

# Python package
install(FILES ${SHOAL_PY_SOURCES} ${CMAKE_BINARY_DIR}/python/shoal/_build_info.py
  DESTINATION ${SHOAL_PYTHON_INSTALL_DIR}/shoal)
install(TARGETS shoal_native shoal_worker_host LIBRARY DESTINATION ${SHOAL_PYTHON_INSTALL_DIR}/shoal)

# C++ client: static libraries, public headers, package config
install(TARGETS shoal_client shoal_tensors shoal_core ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES include/shoal/client.h include/shoal/status.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/shoal)
configure_package_config_file(cmake/shoalConfig.cmake.in ${CMAKE_BINARY_DIR}/install/shoalConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/shoal
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_LIBDIR)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/install/shoalConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/install/shoalConfig.cmake ${CMAKE_BINARY_DIR}/install/shoalConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/shoal)

# systemd, sysusers, configuration, model repository
set(SHOAL_BIN_DIR ${CMAKE_INSTALL_FULL_BINDIR})
set(SHOAL_CONF_DIR ${CMAKE_INSTALL_FULL_SYSCONFDIR}/shoal)
set(SHOAL_DOC_DIR ${CMAKE_INSTALL_FULL_DOCDIR})
configure_file(systemd/shoal.service.in ${CMAKE_BINARY_DIR}/systemd/shoal.service @ONLY)
configure_file(systemd/shoal.socket.in ${CMAKE_BINARY_DIR}/systemd/shoal.socket @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/systemd/shoal.service ${CMAKE_BINARY_DIR}/systemd/shoal.socket
  DESTINATION ${SHOAL_SYSTEMD_UNIT_DIR})
install(FILES systemd/shoal.sysusers DESTINATION ${CMAKE_INSTALL_PREFIX}/lib/sysusers.d RENAME shoal.conf)
install(FILES systemd/shoald.conf DESTINATION ${SHOAL_CONF_DIR})
install(DIRECTORY DESTINATION ${CMAKE_INSTALL_FULL_LOCALSTATEDIR}/lib/shoal/models)
install(FILES README.md docs/architecture.md docs/protocol.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

# manual pages (ShoalManPages.cmake), where pandoc built them
while(SHOAL_MAN_PAGES)
  list(POP_FRONT SHOAL_MAN_PAGES _page _section)
  install(FILES ${_page} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${_section})
endwhile()

# .deb
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME shoal)
set(CPACK_PACKAGE_CONTACT "shoal developers <shoal@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "inference service for PyTorch models written in plain Python")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
find_program(SHOAL_DPKG_SHLIBDEPS dpkg-shlibdeps)
if(SHOAL_DPKG_SHLIBDEPS)  # library dependencies computed by dpkg (dpkg-dev)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
endif()
set(CPACK_DEBIAN_PACKAGE_DEPENDS "python3-torch, python3-msgpack, python3-numpy, systemd")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${CMAKE_BINARY_DIR}/install/conffiles ${CMAKE_BINARY_DIR}/install/postinst)
file(WRITE ${CMAKE_BINARY_DIR}/install/conffiles "${SHOAL_CONF_DIR}/shoald.conf\n")
configure_file(systemd/shoal-postinst ${CMAKE_BINARY_DIR}/install/postinst COPYONLY)
include(CPack)
