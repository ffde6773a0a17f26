// tlsguard's 32-bit test firmware (tools/unixfw.py): the unix port's standard variant, and for
// the rp2-shaped build the tracked allocator that puts mbedTLS on the GC heap.
#define MICROPY_CONFIG_ROM_LEVEL (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)
#include "../mpconfigvariant_common.h"

#if @MBEDTLS_ON_GC_HEAP@
#define MICROPY_TRACKED_ALLOC (1)
#endif
