/* The counters alloc_counter.so keeps for one process, in the first page of the file named by
 * LIMITLESS_ALLOC_COUNTERS (MAP_SHARED), so the process itself and others (a test, a client
 * measuring its server) read them while it runs. Sources/Bench/AllocationCounters.swift reads
 * the same layout. */
#ifndef LIMITLESS_ALLOC_COUNTER_H
#define LIMITLESS_ALLOC_COUNTER_H
#include <stdint.h>

#define LIMITLESS_ALLOC_MAGIC 0x434F4C4C41544D4CULL /* "LMTALLOC" */

struct limitless_alloc_counters {
    uint64_t magic;
    uint64_t pid;
    /* malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign, valloc, pvalloc calls. */
    uint64_t allocations;
    uint64_t frees;
    /* swift_retain / swift_bridgeObjectRetain (and _n) calls, and the releases, made from
     * outside libswiftCore; retain_hooks is 0 when the process has no Swift runtime. */
    uint64_t retains;
    uint64_t releases;
    uint64_t retain_hooks;
    /* Backtraces still to print (to stderr) on the next allocations / retains; a reader sets
     * them to arm the trace for a measured window. */
    int64_t trace_allocations;
    int64_t trace_retains;
};

#endif
