/*
 * limitless_ipc rings: a shared-memory request/reply ring pair to a server that offers them
 * (MSG_IPC_RING_ATTACH), the C side of Sources/IPC/ClientRing.swift. See include/limitless_ipc.h
 * for the API.
 *
 * The memory layout is Sources/IPC/RingLayout.swift's (format version 1):
 *   0                       4096  pair header: magic "LMTRPAIR" u64, version u32 @8, slot size u32 @12,
 *                                 capacity u32 @16, ring count u32 @20
 *   4096 + k*stride         128   ring k header: magic "LMTRING0", version, slot size, capacity, k
 *     +128                  128   tail u64 (producer; published after the slots)
 *     +256                  128   head u64 (consumer)
 *     +384                  128   consumer-sleeping futex word u32 (1: asleep, wake me)
 *     +512 + i*slot_size    slot  slot i: stamp u64 (position + 1 once filled), then one whole
 *                                 message: the 64-byte wire header and its inline payload
 *   stride = 512 + capacity * slot_size rounded up to 4096. Ring 0: requests, ring 1: replies.
 *
 * The server creates the memfd; nothing in it is trusted: the attach checks seals, size, headers
 * and indices, and from then on offsets come from the validated layout, never from shared
 * memory. Per message the consumer reads the slot's stamp (the line it then reads), keeps its
 * head privately, copies the reply header before checking it, and treats an impossible tail or
 * head as a protocol error (-EPROTO), as RingConsumer/RingProducer do.
 */
#define _GNU_SOURCE
#include "limitless_ipc.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef F_GET_SEALS
#define F_GET_SEALS 1034
#define F_SEAL_SHRINK 0x0002
#endif

#define PAIR_MAGIC 0x5249415052544D4Cull  /* "LMTRPAIR" in memory order */
#define RING_MAGIC 0x30474E4952544D4Cull  /* "LMTRING0" in memory order */
#define FORMAT_VERSION 1u
#define RING_COUNT 2u
#define PAGE 4096u
#define PAIR_HEADER 4096u
#define RING_HEADER 512u
#define TAIL_OFFSET 128u
#define HEAD_OFFSET 256u
#define SLEEPING_OFFSET 384u
#define STAMP 8u
#define REPLY_ON_SOCKET 13u        /* IPCRefusal.replyOnSocket, with status EMSGSIZE */
#define SLEEP_SLICE_NS 100000000ull  /* re-check the socket (server gone?) this often while asleep */
#define DEFAULT_SPIN_NS 10000ull     /* RingWaitPolicy.adaptive */

/* One ring of the pair as one side sees it. */
typedef struct {
    uint8_t *header;
    uint8_t *slots;
    uint64_t position;   /* producer: next to fill (tail); consumer: next to read (head) */
    uint64_t known_head; /* producer: the consumer's head as last read */
} ring_end;

struct ipc_ring {
    int slot;             /* the connection's slot in the library's table */
    uint64_t generation;  /* ...and its generation: a reconnect is another connection */
    pid_t pid;
    int memfd;
    uint8_t *base;
    size_t mapped;
    uint64_t capacity, mask;
    size_t slot_size, payload_size;
    uint64_t spin_ns;
    ring_end requests;    /* we produce */
    ring_end replies;     /* we consume */
    ipc_ring_stats_t stats;
};

/* ---- small helpers ---- */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static inline uint64_t *word64(uint8_t *p) { return (uint64_t *)(void *)p; }
static inline uint32_t *word32(uint8_t *p) { return (uint32_t *)(void *)p; }

static int plausible(uint64_t head, uint64_t tail, uint64_t capacity) {
    return tail >= head ? tail - head <= capacity : head - tail <= capacity;
}

static int power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

/* Whether the server's end of the socket is closed, or the library dropped the connection. */
static int gone(const ipc_ring_t *ring) {
    if (lipc_connection_generation(ring->slot) != ring->generation) return 1;
    struct pollfd p = { lipc_connection_fd(ring->slot), POLLIN | POLLRDHUP, 0 };
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0;
}

/* ---- attaching: validate everything the server wrote ---- */

/* Checks ring `k`'s header and indices against the validated layout. */
static int valid_ring(const uint8_t *base, size_t stride, uint32_t slot_size, uint32_t capacity, uint32_t k) {
    const uint8_t *h = base + PAIR_HEADER + k * stride;
    if (get64(h) != RING_MAGIC || get32(h + 8) != FORMAT_VERSION || get32(h + 12) != slot_size ||
        get32(h + 16) != capacity || get32(h + 20) != k)
        return 0;
    return plausible(get64(h + HEAD_OFFSET), get64(h + TAIL_OFFSET), capacity);
}

/* Maps the ring pair memfd `fd` into `ring` after checking it. 0 or -EPROTO (-errno for mmap). */
static int map_pair(ipc_ring_t *ring, int fd) {
    struct stat info;
    if (fstat(fd, &info) != 0) return -EPROTO;
    int seals = fcntl(fd, F_GET_SEALS);
    /* Sealed against shrinking: else the server could truncate it and turn our next access into SIGBUS. */
    if (seals < 0 || !(seals & F_SEAL_SHRINK) || info.st_size < (off_t)PAIR_HEADER) return -EPROTO;
    /* The pair header by value (pread), so it cannot change between checking and using it. */
    uint8_t h[24];
    if (pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h)) return -EPROTO;
    uint32_t slot_size = get32(h + 12), capacity = get32(h + 16);
    if (get64(h) != PAIR_MAGIC || get32(h + 8) != FORMAT_VERSION || get32(h + 20) != RING_COUNT) return -EPROTO;
    if (!power_of_two(slot_size) || slot_size < 16 || slot_size > 4096) return -EPROTO;
    if (!power_of_two(capacity) || capacity < 2 || capacity > (1u << 20)) return -EPROTO;
    if ((uint64_t)capacity * slot_size > (256u << 20)) return -EPROTO;
    if (slot_size < STAMP + IPC_HEADER_SIZE) return -EPROTO;  /* a slot must hold a whole header */
    size_t stride = (RING_HEADER + (size_t)capacity * slot_size + PAGE - 1) / PAGE * PAGE;
    size_t total = PAIR_HEADER + RING_COUNT * stride;
    if ((uint64_t)info.st_size < total) return -EPROTO;
    void *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return -errno;
    for (uint32_t k = 0; k < RING_COUNT; k++) {
        if (!valid_ring(base, stride, slot_size, capacity, k)) {
            munmap(base, total);
            return -EPROTO;
        }
    }
    ring->base = base;
    ring->mapped = total;
    ring->slot_size = slot_size;
    ring->payload_size = slot_size - STAMP;
    ring->capacity = capacity;
    ring->mask = capacity - 1;
    ring->requests.header = ring->base + PAIR_HEADER;
    ring->replies.header = ring->base + PAIR_HEADER + stride;
    ring->requests.slots = ring->requests.header + RING_HEADER;
    ring->replies.slots = ring->replies.header + RING_HEADER;
    uint64_t head = get64(ring->requests.header + HEAD_OFFSET), tail = get64(ring->requests.header + TAIL_OFFSET);
    /* As RingProducer: continue after anything the consumer already read. */
    ring->requests.position = tail > head ? tail : head;
    ring->requests.known_head = head;
    ring->replies.position = get64(ring->replies.header + HEAD_OFFSET);
    return 0;
}

int ipc_ring_attach(pid_t server_pid, uint32_t slot_size, uint32_t capacity, ipc_ring_t **out) {
    if (out == NULL) return -EINVAL;
    *out = NULL;
    int slot = lipc_connection_for(server_pid);
    if (slot < 0) return slot;
    uint8_t header[IPC_HEADER_SIZE];
    uint32_t sequence = lipc_next_sequence(slot);
    lipc_encode_header(header, MSG_IPC_RING_ATTACH, 0, sequence, slot_size, capacity, 0, 0, 0);
    int sent = lipc_send(slot, header, NULL, 0);
    if (sent < 0) return sent;
    ipc_message_t answer;
    memset(&answer, 0, sizeof(answer));
    int fd = -1;
    int result = lipc_await_reply(slot, sequence, &answer, now_ms() + IPC_SEND_RECEIVE_TIMEOUT_MS, &fd);
    if (result == 0 && answer.status != 0) result = -answer.status;  /* ENOTSUP, EBUSY, EINVAL, ... */
    if (result == 0 && fd < 0) result = -EPROTO;
    ipc_ring_t *ring = NULL;
    if (result == 0) {
        ring = calloc(1, sizeof(*ring));
        if (ring == NULL) result = -ENOMEM;
    }
    if (result == 0) result = map_pair(ring, fd);
    if (result != 0) {
        if (fd >= 0) close(fd);
        free(ring);
        return result;
    }
    ring->slot = slot;
    ring->generation = lipc_connection_generation(slot);
    ring->pid = server_pid;
    ring->memfd = fd;
    ring->spin_ns = DEFAULT_SPIN_NS;
    *out = ring;
    return 0;
}

int ipc_ring_detach(ipc_ring_t *ring) {
    if (ring == NULL) return -EINVAL;
    munmap(ring->base, ring->mapped);
    close(ring->memfd);
    free(ring);
    return 0;
}

void ipc_ring_set_spin_ns(ipc_ring_t *ring, uint64_t spin_ns) {
    if (ring != NULL) ring->spin_ns = spin_ns;
}

ipc_ring_stats_t ipc_ring_stats(const ipc_ring_t *ring) {
    ipc_ring_stats_t none = { 0, 0, 0, 0 };
    return ring != NULL ? ring->stats : none;
}

/* ---- producing requests ---- */

/* Whether a request slot is free; reads (and checks) the server's head only when it looks full.
 * 1, 0, or -EPROTO for a head that ran backwards or past our tail. */
static int has_space(ipc_ring_t *ring) {
    ring_end *r = &ring->requests;
    if (r->position - r->known_head < ring->capacity) return 1;
    uint64_t head = __atomic_load_n(word64(r->header + HEAD_OFFSET), __ATOMIC_ACQUIRE);
    if (head < r->known_head || head > r->position) return -EPROTO;
    r->known_head = head;
    return r->position - head < ring->capacity;
}

/* Waits for a free request slot (spinning, then yielding: a full ring is back-pressure, nobody
 * to wake). 0, -ETIMEDOUT, -ECONNRESET or -EPROTO. */
static int wait_for_space(ipc_ring_t *ring, uint64_t deadline) {
    uint64_t start = now_ns();
    for (;;) {
        for (int i = 0; i < 64; i++) {
            int space = has_space(ring);
            if (space != 0) return space < 0 ? space : 0;
            cpu_relax();
        }
        uint64_t now = now_ns();
        if (now >= deadline) return -ETIMEDOUT;
        if (now - start > 20000) {
            if (gone(ring)) return -ECONNRESET;
            sched_yield();
        }
    }
}

/* Publishes the tail and wakes the server's ring thread if, and only if, it said it sleeps.
 * Sequentially consistent store then load, against the consumer's "announce sleep, then read
 * the tail": one side sees the other, no lost wake-up (RingProducer.flush). */
static void publish(ipc_ring_t *ring) {
    uint8_t *h = ring->requests.header;
    __atomic_store_n(word64(h + TAIL_OFFSET), ring->requests.position, __ATOMIC_SEQ_CST);
    uint32_t *sleeping = word32(h + SLEEPING_OFFSET);
    if (__atomic_load_n(sleeping, __ATOMIC_SEQ_CST) != 0 && __atomic_exchange_n(sleeping, 0, __ATOMIC_SEQ_CST) != 0) {
        syscall(SYS_futex, sleeping, FUTEX_WAKE, 0x7FFFFFFF, NULL, NULL, 0);
        ring->stats.wakeups++;
    }
}

/* ---- consuming replies ---- */

static inline uint8_t *reply_slot(const ipc_ring_t *ring) {
    return ring->replies.slots + (size_t)(ring->replies.position & ring->mask) * ring->slot_size;
}

/* The next reply is there: its slot's stamp says so (one load of the line we then read). */
static inline int has_reply(const ipc_ring_t *ring) {
    return __atomic_load_n(word64(reply_slot(ring)), __ATOMIC_ACQUIRE) == ring->replies.position + 1;
}

/* Waits for the next reply: spins for spin_ns, then announces that it sleeps and sleeps on the
 * futex in slices, checking the socket between them. 0, -ETIMEDOUT, -ECONNRESET or -EPROTO. */
static int wait_for_reply(ipc_ring_t *ring, uint64_t deadline) {
    if (has_reply(ring)) return 0;
    /* A reply from a server thread on another core usually lands within a few hundred cycles:
     * look for it before paying for the first clock read. */
    for (int i = 0; i < 256; i++) {
        cpu_relax();
        if (has_reply(ring)) return 0;
    }
    uint64_t start = now_ns();
    while (now_ns() - start < ring->spin_ns) {
        for (int i = 0; i < 64; i++) {
            cpu_relax();
            if (has_reply(ring)) return 0;
        }
    }
    uint8_t *h = ring->replies.header;
    uint32_t *sleeping = word32(h + SLEEPING_OFFSET);
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline) return has_reply(ring) ? 0 : -ETIMEDOUT;
        if (gone(ring)) return -ECONNRESET;
        __atomic_store_n(sleeping, 1, __ATOMIC_SEQ_CST);
        if (has_reply(ring)) {
            __atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
            return 0;
        }
        uint64_t head = ring->replies.position;
        uint64_t tail = __atomic_load_n(word64(h + TAIL_OFFSET), __ATOMIC_SEQ_CST);
        if (!plausible(head, tail, ring->capacity)) {
            __atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
            return -EPROTO;
        }
        if (tail > head) {  /* published, stamp not seen yet: a moment's spin settles it */
            __atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
            cpu_relax();
            continue;
        }
        uint64_t slice = deadline - now < SLEEP_SLICE_NS ? deadline - now : SLEEP_SLICE_NS;
        struct timespec timeout = { (time_t)(slice / 1000000000ull), (long)(slice % 1000000000ull) };
        ring->stats.sleeps++;
        syscall(SYS_futex, sleeping, FUTEX_WAIT, 1, &timeout, NULL, 0);
        __atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
        if (has_reply(ring)) return 0;
    }
}

/* ---- one request and its reply ---- */

int ipc_ring_send_receive(ipc_ring_t *ring, ipc_message_t *msg, ipc_message_t *reply) {
    if (ring == NULL || msg == NULL || reply == NULL) return -EINVAL;
    if (lipc_connection_generation(ring->slot) != ring->generation) return -ECONNRESET;
    uint64_t wire_ptr;
    const void *body;
    size_t body_length;
    int32_t refusal = 0;
    /* Shares a capability over the ring's own connection first if needed: its handle is valid on the ring. */
    int prepared = lipc_wire_data(ring->slot, msg, &wire_ptr, &body, &body_length, &refusal);
    if (prepared < 0) {
        note_refusal(reply, prepared, refusal);
        return prepared;
    }
    if (IPC_HEADER_SIZE + body_length > ring->payload_size) return ipc_send_receive(ring->pid, msg, reply);

    uint64_t deadline = now_ns() + (uint64_t)IPC_SEND_RECEIVE_TIMEOUT_MS * 1000000ull;
    int space = has_space(ring);
    if (space == 0) space = wait_for_space(ring, deadline);
    if (space < 0) return space;
    uint32_t sequence = lipc_next_sequence(ring->slot);
    ring_end *out = &ring->requests;
    uint8_t *slot = out->slots + (size_t)(out->position & ring->mask) * ring->slot_size;
    lipc_encode_header(slot + STAMP, msg->type, msg->flags, sequence, msg->param1, msg->param2, msg->param3, wire_ptr,
                       msg->data_size);
    if (body_length > 0) memcpy(slot + STAMP + IPC_HEADER_SIZE, body, body_length);
    /* Release: the slot's bytes are visible before its stamp says "filled". */
    __atomic_store_n(word64(slot), out->position + 1, __ATOMIC_RELEASE);
    out->position++;
    publish(ring);

    for (;;) {
        int waited = wait_for_reply(ring, deadline);
        if (waited < 0) return waited;
        const uint8_t *in = reply_slot(ring) + STAMP;
        /* The server can write the slot at any time: check and use a private copy of the header. */
        uint8_t h[IPC_HEADER_SIZE];
        memcpy(h, in, IPC_HEADER_SIZE);
        size_t payload = ring->payload_size - IPC_HEADER_SIZE;
        int valid = valid_reply(h, payload);
        size_t offset = valid ? (size_t)get64(h + 48) : 0, size = valid ? get32(h + 56) : 0;
        size_t capacity = reply->data_ptr ? reply->data_size : 0;
        int mine = valid && get32(h + 20) == sequence;
        if (mine && size > 0 && capacity > 0) {
            memcpy((void *)(uintptr_t)reply->data_ptr, in + IPC_HEADER_SIZE + offset, size < capacity ? size : capacity);
        }
        /* Release: our reads of the slot happen before the server may reuse it. */
        ring->replies.position++;
        __atomic_store_n(word64(ring->replies.header + HEAD_OFFSET), ring->replies.position, __ATOMIC_RELEASE);
        if (!valid) return -EPROTO;
        if (!mine) {  /* the reply to a request that timed out earlier; a server sending only such: time out */
            if (now_ns() >= deadline) return -ETIMEDOUT;
            continue;
        }
        ring->stats.exchanges++;
        if ((int32_t)get32(h + 60) == EMSGSIZE && get64(h + 24) == REPLY_ON_SOCKET) {
            ring->stats.replies_on_socket++;
            return lipc_await_reply(ring->slot, sequence, reply, now_ms() + IPC_SEND_RECEIVE_TIMEOUT_MS, NULL);
        }
        fill_reply(reply, h, ring->pid);
        reply->data_size = (uint32_t)size;
        return size > capacity ? -EMSGSIZE : 0;
    }
}
