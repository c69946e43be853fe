// tls13_secrets.cc - the one C++ file: SSL_get_traffic_secrets is C++-only in this
// BoringSSL (see tls13_secrets.h). Built with -fno-exceptions -fno-rtti; it uses no
// C++ runtime (bssl::Span is a header-only view), so the C link needs no -lstdc++.
#include "transport/tls13_secrets.h"

#include <openssl/ssl.h>
#include <string.h>

extern "C" size_t tls13_traffic_secrets(const struct ssl_st *ssl, uint8_t *read_out, uint8_t *write_out,
					size_t cap)
{
	bssl::Span<const uint8_t> rd, wr;
	if (!bssl::SSL_get_traffic_secrets(ssl, &rd, &wr))
		return 0;
	if (rd.size() != wr.size() || rd.size() == 0 || rd.size() > cap)
		return 0;
	memcpy(read_out, rd.data(), rd.size());
	memcpy(write_out, wr.data(), wr.size());
	return rd.size();
}
