/*
 * limitless_ipc: see include/limitless_ipc.h for the API and its semantics.
 *
 * Wire format (Sources/IPC/Message.swift), little-endian, 64 bytes, then inline payload:
 *   type u32 @0, sender_pid i32 @4, flags u32 @8, sender_uid u32 @12, sender_gid u32 @16,
 *   sequence u32 @20, param1/2/3 u64 @24/32/40, data_ptr u64 @48 (inline: offset into the payload;
 *   shared: handle low 32 bits, offset high 32), data_size u32 @56, status i32 @60.
 */
#define _GNU_SOURCE
#include "limitless_ipc.h"
#include "wire.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#define F_SEAL_WRITE 0x0008
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#define MFD_ALLOW_SEALING 0x0002U
#endif

#define DEFAULT_RUNTIME_DIR "/run/limitless"
#define MAX_NAME 64
#define RUNTIME_DIR_MAX 100

/* ---- state: two fixed tables and the runtime directory ---- */

typedef struct {
    uint8_t *datagram;  /* malloc'd: header + payload */
    size_t length;
} stashed_reply;

typedef struct {
    int used;
    pid_t pid;
    int fd;
    uint32_t last_sequence;
    uint64_t generation;  /* changes on every (re)connect of this slot */
    stashed_reply stash[IPC_MAX_STASHED];
    int stash_head, stash_count;
} connection;

typedef struct {
    int used;
    int fd;
    size_t size;
    uint32_t handles[IPC_MAX_CONNECTIONS];  /* the server's handle, per connection slot; 0: not shared */
} capability;

static connection connections[IPC_MAX_CONNECTIONS];
static capability caps[IPC_MAX_CAPS];
static uint64_t connects;
static char runtime_dir[RUNTIME_DIR_MAX + 1];
static int runtime_dir_set;

/* ---- runtime directory and registry ---- */

int ipc_set_runtime_dir(const char *directory) {
    if (directory == NULL) {
        runtime_dir_set = 0;
        return 0;
    }
    size_t length = strlen(directory);
    while (length > 1 && directory[length - 1] == '/') length--;
    if (length == 0) return -EINVAL;
    if (length > RUNTIME_DIR_MAX) return -ENAMETOOLONG;
    memcpy(runtime_dir, directory, length);
    runtime_dir[length] = 0;
    runtime_dir_set = 1;
    return 0;
}

const char *ipc_runtime_dir(void) {
    if (runtime_dir_set) return runtime_dir;
    const char *env = getenv("LIMITLESS_RUNTIME_DIR");
    if (env != NULL && env[0] != 0 && strlen(env) <= RUNTIME_DIR_MAX) return env;
    return DEFAULT_RUNTIME_DIR;
}

/* Reads the decimal pid in `path`; -1 if unreadable. */
static long read_pid_file(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char text[32];
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0) return -1;
    text[n] = 0;
    char *end = NULL;
    long pid = strtol(text, &end, 10);
    if (end == text || (*end != '\n' && *end != 0)) return -1;
    return pid;
}

static int valid_name(const char *name, size_t length) {
    if (length == 0 || length > MAX_NAME || name[0] == '.') return 0;
    for (size_t i = 0; i < length; i++) {
        char c = name[i];
        int ok = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '.' || c == '_' || c == '-';
        if (!ok) return 0;
    }
    return 1;
}

/* Finds NAME.pid holding `pid` and connects to NAME.sock. Returns a socket or -errno. */
static int connect_to_pid(pid_t pid) {
    const char *dir = ipc_runtime_dir();
    DIR *listing = opendir(dir);
    if (listing == NULL) return -ESRCH;
    char path[RUNTIME_DIR_MAX + sizeof(((struct dirent *)0)->d_name) + 16];
    struct dirent *entry;
    int found = 0;
    while ((entry = readdir(listing)) != NULL) {
        size_t length = strlen(entry->d_name);
        if (length <= 4 || strcmp(entry->d_name + length - 4, ".pid") != 0) continue;
        if (!valid_name(entry->d_name, length - 4)) continue;
        snprintf(path, sizeof(path), "%s/%s", dir, entry->d_name);
        if (read_pid_file(path) != (long)pid) continue;
        snprintf(path, sizeof(path), "%s/%.*s.sock", dir, (int)(length - 4), entry->d_name);
        found = 1;
        break;
    }
    closedir(listing);
    if (!found) return -ESRCH;

    struct sockaddr_un address;
    memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(address.sun_path)) return -ENAMETOOLONG;
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int result;
    do result = connect(fd, (struct sockaddr *)&address, sizeof(address));
    while (result != 0 && errno == EINTR);
    if (result != 0) {
        int code = errno;
        close(fd);
        return (code == ENOENT || code == ECONNREFUSED) ? -ECONNREFUSED : -code;
    }
    return fd;
}

/* ---- connections ---- */

static void drop_connection(int slot) {
    connection *c = &connections[slot];
    if (!c->used) return;
    if (c->fd >= 0) close(c->fd);
    for (int i = 0; i < c->stash_count; i++) free(c->stash[(c->stash_head + i) % IPC_MAX_STASHED].datagram);
    for (int i = 0; i < IPC_MAX_CAPS; i++) caps[i].handles[slot] = 0;
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

/* The slot of the connection to `pid`, opening it if needed; or -errno. */
int lipc_connection_for(pid_t pid) {
    int free_slot = -1;
    for (int i = 0; i < IPC_MAX_CONNECTIONS; i++) {
        if (connections[i].used && connections[i].pid == pid) return i;
        if (!connections[i].used && free_slot < 0) free_slot = i;
    }
    if (pid <= 0) return -ESRCH;
    if (free_slot < 0) return -EMFILE;
    int fd = connect_to_pid(pid);
    if (fd < 0) return fd;
    connection *c = &connections[free_slot];
    memset(c, 0, sizeof(*c));
    c->used = 1;
    c->pid = pid;
    c->fd = fd;
    c->generation = ++connects;
    for (int i = 0; i < IPC_MAX_CAPS; i++) caps[i].handles[free_slot] = 0;
    return free_slot;
}

int ipc_close(pid_t server_pid) {
    for (int i = 0; i < IPC_MAX_CONNECTIONS; i++) {
        if (connections[i].used && connections[i].pid == server_pid) {
            drop_connection(i);
            return 0;
        }
    }
    return -ENOENT;
}

static uint32_t next_sequence(connection *c) {
    c->last_sequence++;
    if (c->last_sequence == 0) c->last_sequence = 1;  /* 0 marks error replies to undecodable datagrams */
    return c->last_sequence;
}

uint32_t lipc_next_sequence(int slot) { return next_sequence(&connections[slot]); }
int lipc_connection_fd(int slot) { return connections[slot].used ? connections[slot].fd : -1; }
uint64_t lipc_connection_generation(int slot) { return connections[slot].used ? connections[slot].generation : 0; }

/* A transport error on `slot`: drops the connection when the server is gone. Returns -code. */
static int transport_error(int slot, int code) {
    if (code == EPIPE || code == ECONNRESET || code == ENOTCONN) drop_connection(slot);
    return -code;
}

/* ---- sending ---- */

/* Sends header + body (+ one descriptor if pass_fd >= 0) as one datagram. 0 or -errno. */
static int send_datagram(int slot, const uint8_t header[IPC_HEADER_SIZE], const void *body, size_t body_length, int pass_fd) {
    struct iovec iov[2] = { { (void *)header, IPC_HEADER_SIZE }, { (void *)body, body_length } };
    union { char buffer[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr m;
    memset(&m, 0, sizeof(m));
    m.msg_iov = iov;
    m.msg_iovlen = body_length > 0 ? 2 : 1;
    if (pass_fd >= 0) {
        memset(&control, 0, sizeof(control));
        m.msg_control = control.buffer;
        m.msg_controllen = sizeof(control.buffer);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
    }
    ssize_t sent;
    do sent = sendmsg(connections[slot].fd, &m, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0) return transport_error(slot, errno);
    return 0;
}

int lipc_send(int slot, const uint8_t header[IPC_HEADER_SIZE], const void *body, size_t body_length) {
    return send_datagram(slot, header, body, body_length, -1);
}

void lipc_encode_header(uint8_t h[IPC_HEADER_SIZE], uint32_t type, uint32_t flags, uint32_t sequence, uint64_t p1,
                        uint64_t p2, uint64_t p3, uint64_t data_ptr, uint32_t data_size) {
    memset(h, 0, IPC_HEADER_SIZE);  /* sender pid/uid/gid and status: 0, the server fills the sender */
    put32(h + 0, type);
    put32(h + 8, flags);
    put32(h + 20, sequence);
    put64(h + 24, p1);
    put64(h + 32, p2);
    put64(h + 40, p3);
    put64(h + 48, data_ptr);
    put32(h + 56, data_size);
}

/* ---- receiving ---- */

/* Waits until the socket is readable or the deadline (ms, <0: none) passes. 0 or -errno. */
static int wait_readable(int slot, int64_t deadline) {
    for (;;) {
        int timeout = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left < 0) left = 0;
            timeout = left > 1000000000 ? 1000000000 : (int)left;
        }
        struct pollfd p = { connections[slot].fd, POLLIN, 0 };
        int ready = poll(&p, 1, timeout);
        if (ready < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (ready > 0) return 0;
        if (deadline >= 0 && now_ms() >= deadline) return -ETIMEDOUT;
    }
}

/* recvmsg into up to two buffers. Descriptors that come along are closed (servers send one only
 * with a ring attach's reply), except the first when `keep` is non-NULL: it goes to *keep.
 * Returns the datagram's full length (MSG_TRUNC) or -errno; 0 means end of stream. */
static ssize_t receive_into(int slot, void *a, size_t a_length, void *b, size_t b_length, int flags, int *keep) {
    struct iovec iov[2] = { { a, a_length }, { b, b_length } };
    union { char buffer[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } control;
    struct msghdr m;
    memset(&m, 0, sizeof(m));
    m.msg_iov = iov;
    m.msg_iovlen = b_length > 0 ? 2 : 1;
    m.msg_control = control.buffer;
    m.msg_controllen = sizeof(control.buffer);
    ssize_t n;
    do n = recvmsg(connections[slot].fd, &m, flags | MSG_TRUNC | MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm != NULL; cm = CMSG_NXTHDR(&m, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            if (keep != NULL && *keep < 0) *keep = fd;
            else close(fd);
        }
    }
    return n;
}

/* Delivers a whole datagram held in memory into `reply`. 0, -EMSGSIZE or -EPROTO. */
static int deliver(const uint8_t *datagram, size_t length, ipc_message_t *reply, pid_t pid, uint32_t *sequence) {
    if (length < IPC_HEADER_SIZE || !valid_reply(datagram, length - IPC_HEADER_SIZE)) return -EPROTO;
    if (sequence) *sequence = get32(datagram + 20);
    if (reply == NULL) return 0;
    fill_reply(reply, datagram, pid);
    size_t offset = (size_t)get64(datagram + 48), size = get32(datagram + 56);
    size_t capacity = reply->data_ptr ? reply->data_size : 0;
    size_t copied = size < capacity ? size : capacity;
    if (copied > 0) memcpy((void *)(uintptr_t)reply->data_ptr, datagram + IPC_HEADER_SIZE + offset, copied);
    reply->data_size = (uint32_t)size;
    return size > capacity ? -EMSGSIZE : 0;
}

/* Receives one datagram from the socket: the reply to `want` (or any reply if want_any) goes into
 * `reply`; others are stashed. Returns 0 / -EMSGSIZE when `reply` was filled, 1 when a datagram
 * was stashed (call again), or -errno. */
static int receive_one(int slot, int want_any, uint32_t want, ipc_message_t *reply, uint32_t *sequence, int64_t deadline,
                       int *keep) {
    int waited = wait_readable(slot, deadline);
    if (waited < 0) return waited;
    connection *c = &connections[slot];
    pid_t pid = c->pid;
    uint8_t header[IPC_HEADER_SIZE];
    ssize_t total = receive_into(slot, header, sizeof(header), NULL, 0, MSG_PEEK, NULL);
    if (total < 0) {
        if (total == -EAGAIN) return 1;
        return transport_error(slot, (int)-total);
    }
    if (total == 0) {
        drop_connection(slot);
        return -ECONNRESET;
    }
    if (total < IPC_HEADER_SIZE) {  /* malformed: consume it */
        receive_into(slot, header, sizeof(header), NULL, 0, 0, NULL);
        return -EPROTO;
    }
    size_t payload = (size_t)total - IPC_HEADER_SIZE;
    uint32_t got = get32(header + 20);
    int mine = want_any || got == want;
    void *buffer = (mine && reply) ? (void *)(uintptr_t)reply->data_ptr : NULL;
    size_t capacity = buffer ? reply->data_size : 0;
    if (mine && (payload == 0 || payload <= capacity)) {
        /* The common case: the payload fits the caller's buffer; receive straight into it. */
        ssize_t n = receive_into(slot, header, sizeof(header), buffer, payload, 0, mine ? keep : NULL);
        if (n < 0) return transport_error(slot, (int)-n);
        if (!valid_reply(header, payload)) return -EPROTO;
        if (sequence) *sequence = got;
        if (reply == NULL) return 0;
        fill_reply(reply, header, pid);
        size_t offset = (size_t)get64(header + 48), size = get32(header + 56);
        if (offset > 0 && size > 0) memmove(buffer, (uint8_t *)buffer + offset, size);
        reply->data_size = (uint32_t)size;
        return 0;
    }
    uint8_t *datagram = malloc((size_t)total);
    if (datagram == NULL) return -ENOMEM;
    ssize_t n = receive_into(slot, datagram, (size_t)total, NULL, 0, 0, mine ? keep : NULL);
    if (n < 0) {
        free(datagram);
        return transport_error(slot, (int)-n);
    }
    if (mine) {
        int result = deliver(datagram, (size_t)total, reply, pid, sequence);
        free(datagram);
        return result;
    }
    if (c->stash_count == IPC_MAX_STASHED) {
        free(datagram);
        return -ENOBUFS;
    }
    c->stash[(c->stash_head + c->stash_count) % IPC_MAX_STASHED] = (stashed_reply){ datagram, (size_t)total };
    c->stash_count++;
    return 1;
}

/* Waits for the reply with sequence `want` (others are stashed). */
static int await_reply(int slot, uint32_t want, ipc_message_t *reply, int64_t deadline) {
    return lipc_await_reply(slot, want, reply, deadline, NULL);
}

int lipc_await_reply(int slot, uint32_t want, ipc_message_t *reply, int64_t deadline, int *descriptor) {
    if (descriptor != NULL) *descriptor = -1;
    for (;;) {
        int result = receive_one(slot, 0, want, reply, NULL, deadline, descriptor);
        if (result != 1) return result;
    }
}

/* ---- shared-memory capabilities ---- */

int create_shared_memory_cap(const void *buffer, size_t size) {
    if (buffer == NULL || size == 0) return -EINVAL;
    int index = -1;
    for (int i = 0; i < IPC_MAX_CAPS; i++) {
        if (!caps[i].used) { index = i; break; }
    }
    if (index < 0) return -EMFILE;
    int fd = memfd_create("limitless-cap", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -errno;
    int code = 0;
    if (ftruncate(fd, (off_t)size) != 0) code = errno;
    /* pwrite, not a mapping: F_SEAL_WRITE is refused while a writable shared mapping exists. */
    for (size_t written = 0; code == 0 && written < size;) {
        ssize_t n = pwrite(fd, (const uint8_t *)buffer + written, size - written, (off_t)written);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) code = n < 0 ? errno : EIO;
        else written += (size_t)n;
    }
    if (code == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) code = errno;
    if (code != 0) {
        close(fd);
        return -code;
    }
    caps[index].used = 1;
    caps[index].fd = fd;
    caps[index].size = size;
    memset(caps[index].handles, 0, sizeof(caps[index].handles));
    return index + 1;
}

/* The server's handle for capability `cap` on connection `slot`, sharing it first if needed.
 * Returns the handle (> 0) or -errno; a refusal's status goes to *refusal. */
static int64_t handle_for(int slot, int cap, int32_t *refusal) {
    if (cap < 1 || cap > IPC_MAX_CAPS || !caps[cap - 1].used) return -EBADF;
    capability *k = &caps[cap - 1];
    if (k->handles[slot] != 0) return k->handles[slot];
    uint8_t header[IPC_HEADER_SIZE];
    uint32_t sequence = next_sequence(&connections[slot]);
    lipc_encode_header(header, MSG_IPC_SHARE, 0, sequence, 0, 0, 0, 0, 0);
    int sent = send_datagram(slot, header, NULL, 0, k->fd);
    if (sent < 0) return sent;
    ipc_message_t answer;
    memset(&answer, 0, sizeof(answer));
    int result = await_reply(slot, sequence, &answer, now_ms() + IPC_SEND_RECEIVE_TIMEOUT_MS);
    if (result < 0 && result != -EMSGSIZE) return result;
    if (answer.status != 0 || answer.param1 == 0 || answer.param1 > UINT32_MAX) {
        if (refusal) *refusal = answer.status;
        return -EPROTO;
    }
    k->handles[slot] = (uint32_t)answer.param1;
    return k->handles[slot];
}

int ipc_release_shared_memory_cap(int cap) {
    if (cap < 1 || cap > IPC_MAX_CAPS || !caps[cap - 1].used) return -EBADF;
    capability *k = &caps[cap - 1];
    for (int slot = 0; slot < IPC_MAX_CONNECTIONS; slot++) {
        if (k->handles[slot] == 0 || !connections[slot].used) continue;
        uint8_t header[IPC_HEADER_SIZE];
        uint32_t sequence = next_sequence(&connections[slot]);
        lipc_encode_header(header, MSG_IPC_RELEASE, 0, sequence, k->handles[slot], 0, 0, 0, 0);
        k->handles[slot] = 0;
        if (send_datagram(slot, header, NULL, 0, -1) == 0) {
            ipc_message_t answer;
            memset(&answer, 0, sizeof(answer));
            (void)await_reply(slot, sequence, &answer, now_ms() + IPC_SEND_RECEIVE_TIMEOUT_MS);
        }
    }
    close(k->fd);
    memset(k, 0, sizeof(*k));
    return 0;
}

/* ---- the seed's calls ---- */

int lipc_wire_data(int slot, const ipc_message_t *msg, uint64_t *wire_ptr, const void **body, size_t *body_length,
                   int32_t *refusal) {
    if ((msg->flags & ~IPC_FLAG_SHARED) != 0) return -EINVAL;
    *wire_ptr = 0;
    *body = NULL;
    *body_length = 0;
    if (msg->flags & IPC_FLAG_SHARED) {
        int64_t handle = handle_for(slot, (int)(uint32_t)msg->data_ptr, refusal);
        if (handle < 0) return (int)handle;
        *wire_ptr = (msg->data_ptr & 0xFFFFFFFF00000000ull) | (uint64_t)handle;
    } else if (msg->data_size > 0) {
        if (msg->data_size > IPC_MAX_INLINE) return -EMSGSIZE;
        if (msg->data_ptr == 0) return -EINVAL;
        *body = (const void *)(uintptr_t)msg->data_ptr;
        *body_length = msg->data_size;
    }
    return 0;
}

/* Encodes and sends `msg` on `slot`; returns 0 and the sequence, or -errno. */
static int send_request(int slot, const ipc_message_t *msg, uint32_t *sequence, int32_t *refusal) {
    uint64_t wire_ptr;
    const void *body;
    size_t body_length;
    int prepared = lipc_wire_data(slot, msg, &wire_ptr, &body, &body_length, refusal);
    if (prepared < 0) return prepared;
    uint8_t header[IPC_HEADER_SIZE];
    uint32_t seq = next_sequence(&connections[slot]);
    lipc_encode_header(header, msg->type, msg->flags, seq, msg->param1, msg->param2, msg->param3, wire_ptr, msg->data_size);
    int sent = send_datagram(slot, header, body, body_length, -1);
    if (sent < 0) return sent;
    if (sequence) *sequence = seq;
    return 0;
}

int ipc_send_receive(pid_t server_pid, ipc_message_t *msg, ipc_message_t *reply) {
    if (msg == NULL || reply == NULL) return -EINVAL;
    int slot = lipc_connection_for(server_pid);
    if (slot < 0) return slot;
    uint32_t sequence = 0;
    int32_t refusal = 0;
    int sent = send_request(slot, msg, &sequence, &refusal);
    if (sent < 0) {
        note_refusal(reply, sent, refusal);
        return sent;
    }
    return await_reply(slot, sequence, reply, now_ms() + IPC_SEND_RECEIVE_TIMEOUT_MS);
}

int ipc_send_seq(pid_t server_pid, ipc_message_t *msg, uint32_t *sequence) {
    if (msg == NULL) return -EINVAL;
    int slot = lipc_connection_for(server_pid);
    if (slot < 0) return slot;
    return send_request(slot, msg, sequence, NULL);
}

int ipc_send(pid_t server_pid, ipc_message_t *msg) {
    return ipc_send_seq(server_pid, msg, NULL);
}

int ipc_receive_seq(pid_t server_pid, ipc_message_t *reply, int timeout_ms, uint32_t *sequence) {
    int slot = lipc_connection_for(server_pid);
    if (slot < 0) return slot;
    connection *c = &connections[slot];
    if (c->stash_count > 0) {
        stashed_reply s = c->stash[c->stash_head];
        c->stash_head = (c->stash_head + 1) % IPC_MAX_STASHED;
        c->stash_count--;
        int result = deliver(s.datagram, s.length, reply, server_pid, sequence);
        free(s.datagram);
        return result;
    }
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int result = receive_one(slot, 1, 0, reply, sequence, deadline, NULL);
        if (result != 1) return result;
    }
}

int ipc_receive(pid_t server_pid, ipc_message_t *reply, int timeout_ms) {
    return ipc_receive_seq(server_pid, reply, timeout_ms, NULL);
}

const char *ipc_strerror(int error) {
    int code = error < 0 ? -error : error;
    switch (code) {
    case 0: return "success";
    case ESRCH: return "no server with that pid is registered in the runtime directory (no NAME.pid file holds it; check LIMITLESS_RUNTIME_DIR)";
    case ECONNREFUSED: return "the server is registered but nobody accepts on its socket (it stopped or crashed)";
    case ECONNRESET: case EPIPE: return "the server closed the connection (stopped, crashed, or dropped this client); the next call reconnects";
    case EMSGSIZE: return "too large: inline data is limited to 64 KiB (use create_shared_memory_cap), or the reply's data did not fit the buffer given";
    case EPROTO: return "protocol error: malformed reply, or the server refused the shared-memory capability";
    case ETIMEDOUT: return "no reply in time";
    case EBADF: return "unknown capability id or shared-memory handle";
    case EMFILE: return "table full: too many connections or capabilities (see IPC_MAX_CONNECTIONS, IPC_MAX_CAPS)";
    case ENOBUFS: return "too many unclaimed replies to ipc_send (IPC_MAX_STASHED); collect them with ipc_receive";
    case EBUSY: return "the server's queue for this client was full; the request was not run, retry later";
    case ENOSYS: return "the server does not handle this message type";
    case ENOTSUP: return "not supported by the server (ipc_ring_attach: it offers no shared-memory rings)";
    case EBADMSG: return "the server refused the message as malformed";
    case ENAMETOOLONG: return "runtime directory path too long for a Unix socket address";
    default: return strerror(code);
    }
}
