# BoringSSL, as Debian 12 ships it for Android tools (android-libboringssl-dev).
# Headers live in /usr/include/android and libraries in
# /usr/lib/x86_64-linux-gnu/android, which is not on the loader path, so we link
# with an rpath. The multiarch directory comes from gcc (clang-14 names the triplet
# x86_64-pc-linux-gnu, which is not the directory name). Only translation units that need BoringSSL include <openssl/...>;
# none of ours ever includes OpenSSL's own headers (never mix the two in one TU).
BSSL_PREFIX  := /usr/lib/$(shell gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)/android
BSSL_CFLAGS  := -isystem /usr/include/android
BSSL_LIBS    := -L$(BSSL_PREFIX) -Wl,-rpath,$(BSSL_PREFIX) -lssl -lcrypto
BSSL_DEBS    := android-libboringssl-dev
