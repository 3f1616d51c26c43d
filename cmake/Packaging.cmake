# Debian packages, one per install component (cmake/Install.cmake):
#   libextproc0     runtime: the shared library
#   libextproc-dev  dev: headers, static library, libextproc.pc, the CMake package; depends on
#                   libextproc0 of the very same version and on the -dev packages of the
#                   libraries the static library and pkg-config --static need
#   extproc-tools   tools: extproc-examples, extproc-load and extproc-test, with their man pages
# Build them with: cpack -G DEB (in a build directory configured with
# -DCMAKE_INSTALL_PREFIX=/usr for Debian's multiarch library directory).
set(CPACK_PACKAGE_NAME libextproc)
set(CPACK_PACKAGE_VENDOR "libextproc")
set(CPACK_PACKAGE_CONTACT "libextproc maintainers <maintainers@libextproc.invalid>")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_COMPONENTS_ALL runtime dev tools)

set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Library dependencies of the ELF files, from dpkg-shlibdeps (dpkg-dev).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# A shlibs control file (for dpkg-shlibdeps of packages built against libextproc0; only the
# runtime package has a shared library), and ldconfig in its postinst and postrm.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY "=")

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME libextproc0)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)
# Descriptions: the first line is the summary.
set(EXTPROC_DEB_ABOUT "libextproc serves Envoy's External Processing gRPC service (ext_proc) over
HTTP/2: a processor is a few C callbacks, one per phase of the HTTP exchange.")
set(CPACK_DEBIAN_RUNTIME_DESCRIPTION "SDK for Envoy ext_proc external processors (shared library)
${EXTPROC_DEB_ABOUT}
This package holds the shared library.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libextproc-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_SHLIBDEPS OFF) # no ELF file but the static archive
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
  "libextproc0 (= ${PROJECT_VERSION}), libnghttp2-dev, libuv1-dev, libprotobuf-c-dev, libmicrohttpd-dev, libssl-dev")
set(CPACK_DEBIAN_DEV_DESCRIPTION "SDK for Envoy ext_proc external processors (development files)
${EXTPROC_DEB_ABOUT}
This package holds the headers, the static library, the pkg-config file
(libextproc) and the CMake package (find_package(libextproc)).")

set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME extproc-tools)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION net)
set(CPACK_DEBIAN_TOOLS_DESCRIPTION "example ext_proc processors, a load generator and a test tool
extproc-examples serves the example processors of libextproc (the runner of
its demo); extproc-load drives an ext_proc server the way Envoy does and
reports throughput, latency and errors; extproc-test plays scenario files
against any ext_proc server and says what Envoy would do with each reply.
All are linked with libextproc statically.")

include(CPack)
