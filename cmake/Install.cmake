# What `cmake --install` puts where (GNU layout), split into the components the Debian packages
# are made of (cmake/Packaging.cmake):
#   runtime  the shared library and its SONAME link          -> libextproc0
#   dev      headers, static library, .so link, libextproc.pc,
#            the CMake package (find_package(libextproc))     -> libextproc-dev
#   tools    extproc-examples, extproc-load, extproc-test and their man pages -> extproc-tools
# The generated protobuf-c headers are internal: they are never installed.
include(CMakePackageConfigHelpers)

set(EXTPROC_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/libextproc)

install(TARGETS extproc EXPORT libextprocTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime NAMELINK_COMPONENT dev)
install(TARGETS extproc_static EXPORT libextprocTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
install(DIRECTORY include/extproc DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev
  FILES_MATCHING PATTERN "*.h")

# libextproc.pc is written at install time, so that its prefix is the one installed to
# (cmake --install --prefix, or cpack's /usr), whatever the prefix at configure time.
install(CODE "
  set(EXTPROC_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  set(EXTPROC_PC_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
  set(EXTPROC_PC_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
  set(EXTPROC_PC_VERSION \"${PROJECT_VERSION}\")
  configure_file(\"${CMAKE_CURRENT_LIST_DIR}/libextproc.pc.in\"
                 \"${CMAKE_BINARY_DIR}/pkgconfig/libextproc.pc\" @ONLY)
  " COMPONENT dev)
install(FILES ${CMAKE_BINARY_DIR}/pkgconfig/libextproc.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)

# The CMake package: libextproc::extproc (shared) and libextproc::extproc_static.
install(EXPORT libextprocTargets NAMESPACE libextproc:: DESTINATION ${EXTPROC_CMAKE_DIR}
  COMPONENT dev)
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/libextprocConfig.cmake.in
  ${CMAKE_BINARY_DIR}/cmake/libextprocConfig.cmake INSTALL_DESTINATION ${EXTPROC_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/cmake/libextprocConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_BINARY_DIR}/cmake/libextprocConfig.cmake
              ${CMAKE_BINARY_DIR}/cmake/libextprocConfigVersion.cmake
  DESTINATION ${EXTPROC_CMAKE_DIR} COMPONENT dev)

# The programs, with their man pages (gzipped, as Debian keeps them).
install(TARGETS extproc-examples extproc-load extproc-test RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  COMPONENT tools)
find_program(GZIP gzip REQUIRED)
set(EXTPROC_MAN_PAGES)
foreach(page extproc-examples.1 extproc-load.1 extproc-test.1)
  set(src ${CMAKE_SOURCE_DIR}/docs/man/${page})
  set(out ${CMAKE_BINARY_DIR}/man/${page}.gz)
  add_custom_command(OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/man
    COMMAND ${GZIP} -9 -n -c ${src} > ${out}
    DEPENDS ${src} COMMENT "Compressing man page ${page}" VERBATIM)
  list(APPEND EXTPROC_MAN_PAGES ${out})
endforeach()
add_custom_target(extproc_man_pages ALL DEPENDS ${EXTPROC_MAN_PAGES})
install(FILES ${EXTPROC_MAN_PAGES} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1 COMPONENT tools)

# The HTML API reference, when it was built (cmake --build BUILD --target docs).
install(DIRECTORY ${CMAKE_BINARY_DIR}/docs/html DESTINATION ${CMAKE_INSTALL_DOCDIR}
  COMPONENT dev OPTIONAL)
