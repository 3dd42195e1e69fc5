# Cross-compile for aarch64 Linux with Debian's gcc-aarch64-linux-gnu (sysroot
# /usr/aarch64-linux-gnu, from libc6-dev-arm64-cross):
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
# When qemu-aarch64 (Debian qemu-user) is on PATH it becomes the crosscompiling emulator,
# so ctest runs the aarch64 test binaries under it; -L points its ELF loader at the
# cross sysroot, where ld-linux-aarch64.so.1 and libc live.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(TAKANE_CROSS_PREFIX aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${TAKANE_CROSS_PREFIX}-gcc)
set(TAKANE_CROSS_SYSROOT /usr/${TAKANE_CROSS_PREFIX})

# Libraries and headers from the target sysroot only; programs (python, qemu) from the host.
set(CMAKE_FIND_ROOT_PATH ${TAKANE_CROSS_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(TAKANE_QEMU_AARCH64 qemu-aarch64)
if(TAKANE_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${TAKANE_QEMU_AARCH64} -L ${TAKANE_CROSS_SYSROOT})
endif()
