/*
 * limitless_ipc internals shared by limitless_ipc.c (sockets, capabilities) and ring.c
 * (shared-memory rings): the wire header's byte order and the connection table's calls.
 * Not part of the API (include/limitless_ipc.h is).
 */
#ifndef LIMITLESS_IPC_WIRE_H
#define LIMITLESS_IPC_WIRE_H

#include <errno.h>
#include <stdint.h>
#include <time.h>

#include "limitless_ipc.h"

#define WIRE_FLAG_KNOWN (IPC_FLAG_REPLY | IPC_FLAG_SHARED)

/* ---- little-endian helpers ---- */

static inline void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static inline uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static inline int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Checks a reply header against the payload length that came with it. */
static inline int valid_reply(const uint8_t *h, size_t payload) {
    uint32_t flags = get32(h + 8);
    if ((flags & ~WIRE_FLAG_KNOWN) != 0 || !(flags & IPC_FLAG_REPLY)) return 0;
    if (flags & IPC_FLAG_SHARED) return 0;  /* servers reply with inline data only */
    uint64_t offset = get64(h + 48), size = get32(h + 56);
    return offset <= payload && size <= payload - offset;
}

/* Fills `reply`'s header fields from a validated wire header. */
static inline void fill_reply(ipc_message_t *reply, const uint8_t *h, pid_t pid) {
    reply->type = get32(h + 0);
    reply->sender_pid = (int32_t)pid;
    reply->flags = get32(h + 8);
    reply->param1 = get64(h + 24);
    reply->param2 = get64(h + 32);
    reply->param3 = get64(h + 40);
    reply->status = (int32_t)get32(h + 60);
}

/* A capability the server refused to take: its reason becomes the reply's status. */
static inline void note_refusal(ipc_message_t *reply, int result, int32_t refusal) {
    if (result == -EPROTO && refusal != 0) {
        reply->type = MSG_IPC_SHARE;
        reply->flags = IPC_FLAG_REPLY;
        reply->status = refusal;
    }
}

void lipc_encode_header(uint8_t h[IPC_HEADER_SIZE], uint32_t type, uint32_t flags, uint32_t sequence, uint64_t p1,
                        uint64_t p2, uint64_t p3, uint64_t data_ptr, uint32_t data_size);

/* ---- the connection table (limitless_ipc.c) ---- */

/* The slot of the connection to `pid`, opening it if needed; or -errno. */
int lipc_connection_for(pid_t pid);
/* The socket of connection `slot` and a number that changes whenever the slot is reconnected
 * (a ring remembers it to notice that its connection is gone). */
int lipc_connection_fd(int slot);
uint64_t lipc_connection_generation(int slot);
uint32_t lipc_next_sequence(int slot);
/* Sends a header and body on connection `slot`. 0 or -errno. */
int lipc_send(int slot, const uint8_t header[IPC_HEADER_SIZE], const void *body, size_t body_length);
/* Waits until `deadline` (ms) for the reply with sequence `want`; others are stashed. With
 * `descriptor` non-NULL, a descriptor that comes with that reply is kept there (else -1). */
int lipc_await_reply(int slot, uint32_t want, ipc_message_t *reply, int64_t deadline, int *descriptor);
/* What `msg` puts on the wire as data_ptr, and its inline body (NULL, 0 for none): shares a
 * capability with the server on `slot` first when needed. 0 or -errno (a refusal in *refusal). */
int lipc_wire_data(int slot, const ipc_message_t *msg, uint64_t *wire_ptr, const void **body, size_t *body_length,
                   int32_t *refusal);

#endif /* LIMITLESS_IPC_WIRE_H */
