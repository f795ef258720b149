/* The C client library's hot paths under alloc_counter.so: ipc_send_receive (socket) and
 * ipc_ring_send_receive (ring) against `limitless-bench alloc --serve ipc`, 32 bytes echoed each
 * way. Warms up, then runs COUNT and 10 x COUNT round trips, reading its own counters and the
 * server's (files named by LIMITLESS_ALLOC_COUNTERS and argv[3]) around each window; prints
 * `alloc c-socket|c-ring ops=N client_allocs=.. ... server_releases=..` as limitless-bench does.
 *
 *   alloc_client SERVER_PID socket|ring SERVER_COUNTERS COUNT */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc_counter.h"
#include "limitless_ipc.h"

static struct limitless_alloc_counters *map_counters(const char *path) {
    int fd = open(path, O_RDWR);
    if (fd < 0) return NULL;
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (page == MAP_FAILED) return NULL;
    struct limitless_alloc_counters *counters = page;
    return __atomic_load_n(&counters->magic, __ATOMIC_ACQUIRE) == LIMITLESS_ALLOC_MAGIC ? counters : NULL;
}

#define LOAD(c, field) __atomic_load_n(&(c)->field, __ATOMIC_RELAXED)

static char request[32], answer[256];

static int once(pid_t server, ipc_ring_t *ring, uint64_t sequence) {
    ipc_message_t msg, reply;
    memset(&msg, 0, sizeof msg);
    msg.type = MSG_VFS_STAT;
    msg.param1 = sequence;
    msg.data_ptr = (uint64_t)(uintptr_t)request;
    msg.data_size = sizeof request;
    memset(&reply, 0, sizeof reply);
    reply.data_ptr = (uint64_t)(uintptr_t)answer;
    reply.data_size = sizeof answer;
    int result = ring ? ipc_ring_send_receive(ring, &msg, &reply) : ipc_send_receive(server, &msg, &reply);
    if (result != 0 || reply.status != 0 || reply.param1 != sequence || reply.data_size != sizeof request) {
        fprintf(stderr, "alloc_client: round trip %llu failed: %d (%s), status %d\n", (unsigned long long)sequence, result,
                ipc_strerror(result), reply.status);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: alloc_client SERVER_PID socket|ring SERVER_COUNTERS COUNT\n");
        return 2;
    }
    pid_t server = (pid_t)atoi(argv[1]);
    int use_ring = strcmp(argv[2], "ring") == 0;
    long count = atol(argv[4]);
    const char *own_path = getenv("LIMITLESS_ALLOC_COUNTERS");
    struct limitless_alloc_counters *own = own_path ? map_counters(own_path) : NULL;
    struct limitless_alloc_counters *peer = map_counters(argv[3]);
    if (own == NULL || peer == NULL || count <= 0) {
        fprintf(stderr, "alloc_client: no counters (run under alloc_counter.so with LIMITLESS_ALLOC_COUNTERS) or bad COUNT\n");
        return 2;
    }
    memset(request, 0x5A, sizeof request);
    ipc_ring_t *ring = NULL;
    if (use_ring && ipc_ring_attach(server, 0, 0, &ring) != 0) {
        fprintf(stderr, "alloc_client: ipc_ring_attach failed\n");
        return 1;
    }
    uint64_t sequence = 0;
    for (long i = 0; i < count; i++)
        if (once(server, ring, ++sequence) != 0) return 1;
    const char *trace = getenv("LIMITLESS_ALLOC_TRACE");
    for (long ops = count; ops <= count * 10; ops *= 10) {
        if (trace) {
            __atomic_store_n(&own->trace_allocations, atol(trace), __ATOMIC_RELAXED);
            __atomic_store_n(&peer->trace_allocations, atol(trace), __ATOMIC_RELAXED);
        }
        uint64_t allocs = LOAD(own, allocations), peer_allocs = LOAD(peer, allocations);
        uint64_t peer_retains = LOAD(peer, retains), peer_releases = LOAD(peer, releases);
        for (long i = 0; i < ops; i++)
            if (once(server, ring, ++sequence) != 0) return 1;
        allocs = LOAD(own, allocations) - allocs;
        peer_allocs = LOAD(peer, allocations) - peer_allocs;
        peer_retains = LOAD(peer, retains) - peer_retains;
        peer_releases = LOAD(peer, releases) - peer_releases;
        __atomic_store_n(&own->trace_allocations, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&peer->trace_allocations, 0, __ATOMIC_RELAXED);
        printf("alloc c-%s ops=%ld client_allocs=%llu client_retains=0 client_releases=0 server_allocs=%llu server_retains=%llu "
               "server_releases=%llu\n", use_ring ? "ring" : "socket", ops, (unsigned long long)allocs, (unsigned long long)peer_allocs,
               (unsigned long long)peer_retains, (unsigned long long)peer_releases);
    }
    if (ring) ipc_ring_detach(ring);
    return 0;
}
