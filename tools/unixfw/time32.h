// Forced first include of every file of tlsguard's 32-bit test firmware: a 32-bit time_t, because
// libfaketime (Debian 0.9.10), which the tests use to move the device clock, does not wrap glibc's
// 64-bit-time entry points (__clock_gettime64...) that -D_TIME_BITS=64 selects. Boards keep a 64-bit
// time_t; dates past 2038 are the one thing this build cannot run.
#undef _TIME_BITS
