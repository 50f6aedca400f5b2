# Manual pages: shoald(8), shoald.conf(5) and shoal(1), each from one source,
# docs/man/PAGE.md, rendered by pandoc (Debian's package) into build/man/manN/PAGE.gz,
# where `MANPATH=build/man man shoald` reads them. Without pandoc the build goes on
# without them and says so; scripts/setup.sh installs pandoc. ShoalInstall.cmake installs
# SHOAL_MAN_PAGES under CMAKE_INSTALL_MANDIR (cmake --install and the .deb).
# Sets: SHOAL_HAVE_MAN_PAGES (TRUE/FALSE), SHOAL_MAN_PAGES (list of "FILE;SECTION" pairs).
find_program(SHOAL_PANDOC pandoc)
find_program(SHOAL_GZIP gzip)
set(SHOAL_MAN_PAGES "")
set(SHOAL_HAVE_MAN_PAGES FALSE)
if(NOT SHOAL_PANDOC)
  message(WARNING "pandoc not found: the manual pages (docs/man/*.md) are skipped, not built nor installed "
                  "(install pandoc: scripts/setup.sh does)")
  return()
endif()
set(SHOAL_HAVE_MAN_PAGES TRUE)
set(_shoal_man_outputs "")
foreach(page shoald.8 shoald.conf.5 shoal.1)
  string(REGEX MATCH "[0-9]$" section ${page})
  set(dir ${CMAKE_BINARY_DIR}/man/man${section})
  set(out ${dir}/${page})
  set(cmds COMMAND ${SHOAL_PANDOC} --standalone --from markdown-smart --to man
                   --metadata "footer=shoal ${PROJECT_VERSION}" --output ${out} ${CMAKE_SOURCE_DIR}/docs/man/${page}.md)
  if(SHOAL_GZIP)  # Debian's policy: gzip -9n, no name or time stamp inside
    list(APPEND cmds COMMAND ${SHOAL_GZIP} -9nf ${out})
    set(out ${out}.gz)
  endif()
  add_custom_command(OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${dir}
    ${cmds}
    DEPENDS ${CMAKE_SOURCE_DIR}/docs/man/${page}.md
    COMMENT "manual page ${page}" VERBATIM)
  list(APPEND _shoal_man_outputs ${out})
  list(APPEND SHOAL_MAN_PAGES ${out} ${section})
endforeach()
add_custom_target(man_pages ALL DEPENDS ${_shoal_man_outputs})
