# liburing: the io_uring user-space library.
# Pinned to Debian 12's liburing-dev 2.3 (see third_party/README.md). Helpers newer
# than 2.3 (for example io_uring_setup_buf_ring) live in src/engine/uring.c, never here.
URING_CFLAGS :=
URING_LIBS   := -luring
URING_DEB    := liburing-dev
