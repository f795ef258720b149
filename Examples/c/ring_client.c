/*
 * A C client of a Limitless server over a shared-memory ring (limitless_ipc.h: ipc_ring_attach,
 * ipc_ring_send_receive, ipc_ring_detach).
 *
 *   ring_client SERVER_PID                 round trips with checked replies (needs the handler
 *                                          of Tests/IPCTests/CAPITests.swift); prints
 *                                          "ring: N checks passed" or the first failed check
 *   ring_client SERVER_PID --bench COUNT   COUNT round trips of 8 bytes over the ring and over the
 *                                          socket in alternating rounds, against an echo handler
 *                                          (limitless-testserver --echo --rings 1); prints p50/p99
 *                                          of each and their ratio
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "limitless_ipc.h"

#define PTR(p) ((uint64_t)(uintptr_t)(p))

static int checks;
#define CHECK(cond)                                                   \
    do {                                                              \
        if (!(cond)) {                                                \
            printf("FAILED line %d: %s\n", __LINE__, #cond);          \
            return 1;                                                 \
        }                                                             \
        checks++;                                                     \
    } while (0)

static int run_checks(pid_t server) {
    ipc_ring_t *ring = NULL;
    CHECK(ipc_ring_attach(server, 0, 0, &ring) == 0 && ring != NULL);
    ipc_message_t msg, reply;
    char buffer[512];

    /* Many round trips with inline data: each reply checked (the server's handler says
     * "stat:" + data, param1 = our pid from the kernel, param2 = param1 + 1). */
    for (int i = 0; i < 1000; i++) {
        char path[32];
        int length = snprintf(path, sizeof(path), "/file/%d", i);
        memset(&msg, 0, sizeof(msg));
        msg.type = MSG_VFS_STAT;
        msg.sender_pid = 1;  /* ignored: the server takes the pid from the connection */
        msg.param1 = (uint64_t)i;
        msg.data_ptr = PTR(path);
        msg.data_size = (uint32_t)length;
        memset(&reply, 0, sizeof(reply));
        reply.data_ptr = PTR(buffer);
        reply.data_size = sizeof(buffer);
        CHECK(ipc_ring_send_receive(ring, &msg, &reply) == 0);
        CHECK(reply.status == 0 && reply.type == MSG_VFS_STAT && (reply.flags & IPC_FLAG_REPLY));
        CHECK(reply.param1 == (uint64_t)getpid() && reply.param2 == (uint64_t)i + 1 && reply.sender_pid == server);
        CHECK(reply.data_size == (uint32_t)(5 + length) && memcmp(buffer, "stat:", 5) == 0 &&
              memcmp(buffer + 5, path, (size_t)length) == 0);
    }
    CHECK(ipc_ring_stats(ring).exchanges == 1000);

    /* Server errors are statuses. */
    memset(&msg, 0, sizeof(msg));
    msg.type = MSG_VFS_OPEN;
    reply.data_ptr = 0;
    reply.data_size = 0;
    CHECK(ipc_ring_send_receive(ring, &msg, &reply) == 0 && reply.status == ENOENT);
    msg.type = 0x7777;
    CHECK(ipc_ring_send_receive(ring, &msg, &reply) == 0 && reply.status == ENOSYS);

    /* A reply too large for a slot comes on the socket; one too large for the buffer: -EMSGSIZE. */
    memset(&msg, 0, sizeof(msg));
    msg.type = MSG_VFS_READ;
    msg.param1 = 400;
    reply.data_ptr = PTR(buffer);
    reply.data_size = sizeof(buffer);
    CHECK(ipc_ring_send_receive(ring, &msg, &reply) == 0 && reply.data_size == 400 && (unsigned char)buffer[399] == 143);
    CHECK(ipc_ring_stats(ring).replies_on_socket == 1);
    msg.param1 = 100;
    reply.data_size = 10;
    CHECK(ipc_ring_send_receive(ring, &msg, &reply) == -EMSGSIZE && reply.data_size == 100 && buffer[9] == 9);

    /* A request too large for a slot goes on the socket. */
    static unsigned char large[1000];
    for (size_t i = 0; i < sizeof(large); i++) large[i] = (unsigned char)i;
    memset(&msg, 0, sizeof(msg));
    msg.type = MSG_VFS_WRITE;
    msg.data_ptr = PTR(large);
    msg.data_size = sizeof(large);
    reply.data_ptr = 0;
    reply.data_size = 0;
    uint64_t before = ipc_ring_stats(ring).exchanges;
    CHECK(ipc_ring_send_receive(ring, &msg, &reply) == -EMSGSIZE && reply.param2 == sizeof(large));
    CHECK(ipc_ring_stats(ring).exchanges == before);

    /* Data in shared memory, over the ring: the capability is shared on the ring's connection. */
    static const char text[] = "shared over the ring";
    int cap = create_shared_memory_cap(text, sizeof(text) - 1);
    CHECK(cap >= 1);
    uint64_t sum = 0;
    for (size_t i = 0; i + 1 < sizeof(text); i++) sum += (unsigned char)text[i];
    memset(&msg, 0, sizeof(msg));
    msg.type = MSG_VFS_WRITE;
    msg.flags = IPC_FLAG_SHARED;
    msg.data_ptr = (uint64_t)cap;
    msg.data_size = sizeof(text) - 1;
    reply.data_ptr = PTR(buffer);
    reply.data_size = sizeof(buffer);
    before = ipc_ring_stats(ring).exchanges;
    CHECK(ipc_ring_send_receive(ring, &msg, &reply) == 0);
    CHECK(reply.status == 0 && reply.param1 == sum && reply.param2 == sizeof(text) - 1);
    CHECK(reply.data_size == sizeof(text) - 1 && memcmp(buffer, text, sizeof(text) - 1) == 0);
    msg.data_ptr = (uint64_t)cap | (uint64_t)7 << 32;  /* from byte 7, past the end: EINVAL */
    CHECK(ipc_ring_send_receive(ring, &msg, &reply) == 0 && reply.status == EINVAL);
    CHECK(ipc_ring_stats(ring).exchanges == before + 2);
    CHECK(ipc_release_shared_memory_cap(cap) == 0);
    msg.data_ptr = (uint64_t)cap;
    CHECK(ipc_ring_send_receive(ring, &msg, &reply) == -EBADF);  /* released: unknown here */

    /* One ring per connection; the socket keeps working beside the ring. */
    ipc_ring_t *second = NULL;
    CHECK(ipc_ring_attach(server, 0, 0, &second) == -EBUSY && second == NULL);
    memset(&msg, 0, sizeof(msg));
    msg.type = MSG_VFS_STAT;
    msg.param1 = 5;
    reply.data_ptr = PTR(buffer);
    reply.data_size = sizeof(buffer);
    CHECK(ipc_send_receive(server, &msg, &reply) == 0 && reply.param2 == 6);

    /* The connection closed under the ring: reported, not waited for. */
    CHECK(ipc_close(server) == 0);
    CHECK(ipc_ring_send_receive(ring, &msg, &reply) == -ECONNRESET);
    CHECK(ipc_ring_detach(ring) == 0);

    /* Bad arguments. */
    CHECK(ipc_ring_attach(server, 0, 0, NULL) == -EINVAL);
    CHECK(ipc_ring_send_receive(NULL, &msg, &reply) == -EINVAL);
    CHECK(ipc_ring_attach(999999, 0, 0, &ring) == -ESRCH);
    CHECK(ipc_ring_attach(server, 100, 0, &ring) == -EINVAL);  /* not a power of two */
    printf("ring: %d checks passed\n", checks);
    return 0;
}

/* ---- benchmark ---- */

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sorts `samples` and returns the value at `fraction`. */
static uint64_t percentile(uint64_t *samples, size_t count, double fraction) {
    qsort(samples, count, sizeof(uint64_t), compare);
    size_t index = (size_t)(fraction * (double)(count - 1));
    return samples[index];
}

/* One timed round trip: 8 bytes out, the same 8 bytes back (limitless-testserver --echo). */
static int round_trip(pid_t server, ipc_ring_t *ring, uint64_t value, uint64_t *elapsed) {
    uint64_t echoed = 0;
    ipc_message_t msg = { 0 }, reply = { 0 };
    msg.type = MSG_VFS_STAT;
    msg.data_ptr = PTR(&value);
    msg.data_size = sizeof(value);
    reply.data_ptr = PTR(&echoed);
    reply.data_size = sizeof(echoed);
    uint64_t start = now_ns();
    int result = ring ? ipc_ring_send_receive(ring, &msg, &reply) : ipc_send_receive(server, &msg, &reply);
    *elapsed = now_ns() - start;
    if (result != 0 || reply.status != 0 || echoed != value) {
        printf("round trip failed: %s (status %d, echoed %llu for %llu)\n", ipc_strerror(result), (int)reply.status,
               (unsigned long long)echoed, (unsigned long long)value);
        return -1;
    }
    return 0;
}

#define ROUNDS 20

static int run_bench(pid_t server, long count) {
    ipc_ring_t *ring = NULL;
    int attached = ipc_ring_attach(server, 128, 16, &ring);
    if (attached != 0) {
        printf("ipc_ring_attach: %s\n", ipc_strerror(attached));
        return 1;
    }
    size_t per_round = (size_t)(count / ROUNDS > 0 ? count / ROUNDS : 1), total = per_round * ROUNDS;
    uint64_t *ring_samples = malloc(total * sizeof(uint64_t)), *socket_samples = malloc(total * sizeof(uint64_t));
    uint64_t *round_buffer = malloc(per_round * sizeof(uint64_t));
    if (!ring_samples || !socket_samples || !round_buffer) return 1;
    uint64_t value = 1, ignored;
    for (int i = 0; i < 1000; i++) {  /* warm-up, both paths */
        if (round_trip(server, ring, value++, &ignored) || round_trip(server, NULL, value++, &ignored)) return 1;
    }
    /* Alternating rounds (socket, ring, socket, ring...): noise from the shared machine lands on
     * both alike; the median of the per-round p50 ratios is printed beside the pooled figures. */
    double ratios[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t p50[2];
        for (int path = 0; path < 2; path++) {
            uint64_t *pool = path ? ring_samples : socket_samples;
            for (size_t i = 0; i < per_round; i++) {
                if (round_trip(server, path ? ring : NULL, value++, &round_buffer[i])) return 1;
                pool[(size_t)r * per_round + i] = round_buffer[i];
            }
            p50[path] = percentile(round_buffer, per_round, 0.5);
        }
        ratios[r] = (double)p50[0] / (double)(p50[1] ? p50[1] : 1);
    }
    qsort(ratios, ROUNDS, sizeof(double), compare_double);
    ipc_ring_stats_t stats = ipc_ring_stats(ring);
    uint64_t ring_p50 = percentile(ring_samples, total, 0.5), ring_p99 = percentile(ring_samples, total, 0.99);
    uint64_t socket_p50 = percentile(socket_samples, total, 0.5), socket_p99 = percentile(socket_samples, total, 0.99);
    printf("c ring   (ipc_ring_send_receive): RTT p50 %llu ns  p99 %llu ns  (%zu samples, %llu futex sleeps)\n",
           (unsigned long long)ring_p50, (unsigned long long)ring_p99, total, (unsigned long long)stats.sleeps);
    printf("c socket (ipc_send_receive):      RTT p50 %llu ns  p99 %llu ns  (%zu samples)\n", (unsigned long long)socket_p50,
           (unsigned long long)socket_p99, total);
    printf("c socket / ring RTT (p50): pooled %.1fx, median of %d alternating rounds' ratios %.1fx\n",
           (double)socket_p50 / (double)(ring_p50 ? ring_p50 : 1), ROUNDS, (ratios[ROUNDS / 2 - 1] + ratios[ROUNDS / 2]) / 2);
    free(ring_samples);
    free(socket_samples);
    free(round_buffer);
    ipc_ring_detach(ring);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SERVER_PID [--bench COUNT]\n", argv[0]);
        return 2;
    }
    pid_t server = (pid_t)strtol(argv[1], NULL, 10);
    if (argc >= 4 && strcmp(argv[2], "--bench") == 0) return run_bench(server, strtol(argv[3], NULL, 10));
    return run_checks(server);
}
