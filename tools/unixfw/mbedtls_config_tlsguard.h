// mbedTLS of tlsguard's 32-bit test firmware (tools/unixfw.py), shaped like a board's; see
// docs/PLATFORM.md for what still differs.
#ifndef TLSGUARD_MBEDTLS_CONFIG_H
#define TLSGUARD_MBEDTLS_CONFIG_H

// What the unix port itself needs (cryptolib's CTR mode, the DTLS timer).
#define MBEDTLS_CIPHER_MODE_CTR
#define MBEDTLS_TIMING_C
// ESP-IDF's default and rp2's setting: faster NIST curves, same results.
#define MBEDTLS_ECP_NIST_OPTIM

#if @MBEDTLS_ON_GC_HEAP@
// rp2/stm32: mbedTLS allocates on the GC heap through m_tracked_calloc.
#define MICROPY_MBEDTLS_CONFIG_BARE_METAL (1)
#endif

#include "extmod/mbedtls/mbedtls_config_common.h"

#if @MBEDTLS_ON_GC_HEAP@
// The boards take entropy from their hardware RNG; here it is /dev/urandom (as in the unix
// port's coverage build, which tests the same bare-metal allocation).
#undef MBEDTLS_ENTROPY_HARDWARE_ALT
#undef MBEDTLS_NO_PLATFORM_ENTROPY
#else
// ESP32: ESP-IDF 5.5's mbedTLS Kconfig defaults under MicroPython's boards/sdkconfig.base.
#define MBEDTLS_SSL_KEEP_PEER_CERTIFICATE  // getpeercert(True) exists
#define MBEDTLS_PEM_PARSE_C                 // PEM accepted beside DER
#define MBEDTLS_BASE64_C
#define MBEDTLS_CCM_C                       // AES-CCM suites offered too
#endif

#endif // TLSGUARD_MBEDTLS_CONFIG_H
