/*
 * limitless_ipc: the seed's C calls (ipc_send_receive, ipc_send, ipc_receive,
 * create_shared_memory_cap) over Limitless IPC, for C programs, and shared-memory rings to
 * servers that offer them (ipc_ring_attach, ipc_ring_send_receive).
 *
 * Plain C11 plus POSIX/Linux system calls; no dependency beyond libc. It speaks the wire format of
 * Sources/IPC/Message.swift (a 64-byte little-endian header, then up to 64 KiB of inline payload)
 * over the Unix SOCK_SEQPACKET sockets the Swift IPCServer listens on (RUNTIME_DIR/NAME.sock).
 *
 * Finding a server: by pid, through the registry the Swift side keeps: RUNTIME_DIR/NAME.pid holds
 * the pid of the server listening at RUNTIME_DIR/NAME.sock. RUNTIME_DIR is, in order: what
 * ipc_set_runtime_dir() set, $LIMITLESS_RUNTIME_DIR, /run/limitless (the Swift default).
 *
 * Connections are opened lazily, on the first call naming a server pid, and cached (at most
 * IPC_MAX_CONNECTIONS at once; ipc_close() frees one). A connection the server closed is dropped
 * when a call notices (that call fails with -ECONNRESET or -EPIPE); the next call reconnects.
 *
 * Return values: 0 (or a capability id) on success, -errno on failure: use ipc_strerror().
 * A server's own answer is not a failure of the call: it is reply->status (0 or a positive errno,
 * Linux numbering, e.g. ENOENT, EBADF, EBUSY: the server's queue for this client was full,
 * ENOSYS: the server does not handle that type).
 *
 * Thread safety: none. The connection and capability tables are process-global and unlocked:
 * call this library from one thread at a time (or under your own lock).
 *
 * Limits (fixed tables, no allocation beyond stashed replies):
 *   IPC_MAX_CONNECTIONS servers connected at once; IPC_MAX_CAPS capabilities alive at once;
 *   IPC_MAX_STASHED early replies kept per connection (see ipc_send_receive);
 *   IPC_MAX_INLINE bytes of inline data per message.
 */
#ifndef LIMITLESS_IPC_H
#define LIMITLESS_IPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IPC_MAX_INLINE 65536        /* Message.maxInlinePayload */
#define IPC_HEADER_SIZE 64          /* Message.headerSize (wire only; not sizeof(ipc_message_t)) */
#define IPC_MAX_CONNECTIONS 16
#define IPC_MAX_CAPS 64
#define IPC_MAX_STASHED 16
#define IPC_SEND_RECEIVE_TIMEOUT_MS 10000  /* ipc_send_receive and sharing wait this long */

/* msg->flags */
#define IPC_FLAG_REPLY  0x1u  /* set by the library in replies; never set it in a request */
#define IPC_FLAG_SHARED 0x2u  /* data_ptr is a capability id from create_shared_memory_cap */

/* Message types (the registry, Sources/IPC/MessageType.swift). A type not listed there is
 * answered with status ENOSYS. */
#define MSG_IPC_SHARE                     0x0001u  /* used by the library itself */
#define MSG_IPC_RELEASE                   0x0002u  /* used by the library itself */
#define MSG_IPC_PING                      0x0003u
#define MSG_IPC_ERROR                     0x0004u
#define MSG_IPC_RING_ATTACH               0x0005u
#define MSG_VFS_OPEN                      0x0100u
#define MSG_VFS_READ                      0x0101u
#define MSG_VFS_WRITE                     0x0102u
#define MSG_VFS_CLOSE                     0x0103u
#define MSG_VFS_STAT                      0x0104u
#define MSG_VFS_MKDIR                     0x0105u
#define MSG_VFS_RMDIR                     0x0106u
#define MSG_VFS_UNLINK                    0x0107u
#define MSG_VFS_READDIR                   0x0108u
#define MSG_VFS_RENAME                    0x0109u
#define MSG_VFS_TRUNCATE                  0x010Au
#define MSG_VFS_FSYNC                     0x010Bu
#define MSG_VFS_LSEEK                     0x010Cu
#define MSG_VFS_CHMOD                     0x010Du
#define MSG_VFS_CHOWN                     0x010Eu
#define MSG_VFS_UTIMES                    0x010Fu
#define MSG_VFS_SYMLINK                   0x0110u
#define MSG_VFS_READLINK                  0x0111u
#define MSG_VFS_LINK                      0x0112u
#define MSG_VFS_STATFS                    0x0113u
#define MSG_VFS_FSTAT                     0x0114u
#define MSG_VFS_MOUNT                     0x0115u
#define MSG_VFS_UNMOUNT                   0x0116u
#define MSG_BLOCK_OPEN_NAMESPACE          0x0200u
#define MSG_BLOCK_GEOMETRY                0x0201u
#define MSG_BLOCK_READ                    0x0202u
#define MSG_BLOCK_WRITE                   0x0203u
#define MSG_BLOCK_FLUSH                   0x0204u
#define MSG_BLOCK_TRIM                    0x0205u
#define MSG_BLOCK_REGISTER_BUFFER         0x0206u
#define MSG_BLOCK_UNREGISTER_BUFFER       0x0207u
#define MSG_BLOCK_PRESENT_CAPABILITY      0x0208u
#define MSG_USB_LIST_DEVICES              0x0300u
#define MSG_USB_DEVICE_DESCRIPTOR         0x0301u
#define MSG_USB_CONTROL_TRANSFER          0x0302u
#define MSG_USB_BULK_TRANSFER             0x0303u
#define MSG_USB_INTERRUPT_TRANSFER        0x0304u
#define MSG_USB_RESET_PORT                0x0305u
#define MSG_POWER_GET_STATE               0x0400u
#define MSG_POWER_SET_STATE               0x0401u
#define MSG_POWER_GET_CPU_FREQUENCY       0x0402u
#define MSG_POWER_SET_CPU_FREQUENCY       0x0403u
#define MSG_POWER_ACPI_READ               0x0404u
#define MSG_SUPERVISOR_REGISTER           0x0500u
#define MSG_SUPERVISOR_HEARTBEAT          0x0501u
#define MSG_SUPERVISOR_LOG                0x0502u
#define MSG_SUPERVISOR_CHECKPOINT_SAVE    0x0503u
#define MSG_SUPERVISOR_CHECKPOINT_RESTORE 0x0504u
#define MSG_SUPERVISOR_CAPABILITY_GRANT   0x0505u
#define MSG_SUPERVISOR_CONTROL            0x0506u
#define MSG_SUPERVISOR_DEPENDENCY_STATE   0x0507u
#define MSG_SUPERVISOR_CAPABILITY_REVOKE  0x0508u
#define MSG_SUPERVISOR_BLOCK_TOKEN        0x0509u
#define MSG_SUPERVISOR_STANDBY_READY      0x050Au
#define MSG_SUPERVISOR_STANDBY_ACTIVATE   0x050Bu
#define MSG_SUPERVISOR_SECCOMP_LISTENER   0x050Cu

/*
 * The seed's message, field for field and in its order, plus `status`. This is the C caller's
 * view, not the wire layout (the library encodes and decodes the 64-byte wire header).
 *
 * Requests:
 *   type        a MSG_* number.
 *   sender_pid  ignored. The server takes the sender's pid (and uid, gid) from the kernel
 *               (SO_PEERCRED); nothing a client puts here is sent or believed.
 *   flags       0, or IPC_FLAG_SHARED. Other bits: -EINVAL.
 *   param1..3   passed through unchanged.
 *   data_ptr    without IPC_FLAG_SHARED: a POINTER (cast to uint64_t, e.g.
 *               (uint64_t)(uintptr_t)buf) to data_size bytes, copied inline into the message
 *               (data_size <= IPC_MAX_INLINE, else -EMSGSIZE; 0 with data_size 0 for no data).
 *               With IPC_FLAG_SHARED: low 32 bits a capability id from create_shared_memory_cap,
 *               high 32 bits a byte offset into it; data_size bytes from there. The library
 *               shares the capability with the server the first time (see below).
 *   data_size   bytes of data.
 *   status      ignored (requests carry 0 on the wire).
 *
 * Replies (filled by ipc_send_receive and ipc_receive):
 *   Before the call, set reply->data_ptr to a buffer (a pointer cast to uint64_t, or 0) and
 *   reply->data_size to its capacity in bytes. The library copies the reply's inline data there,
 *   sets data_size to the reply's actual data size and leaves data_ptr pointing at your buffer.
 *   If the data did not fit, the first `capacity` bytes are copied, data_size still says the
 *   actual size, every other field is filled, and the call returns -EMSGSIZE.
 *   type, flags (IPC_FLAG_REPLY set), param1..3 and status (0 or a positive errno) are the
 *   server's; sender_pid is set to the server pid the call named.
 */
typedef struct ipc_message {
    uint32_t type;
    int32_t sender_pid;
    uint32_t flags;
    uint64_t param1, param2, param3;
    uint64_t data_ptr;
    uint32_t data_size;
    int32_t status;  /* errno-style status of a reply; 0 in requests */
} ipc_message_t;

/*
 * Sends `msg` to the server with pid `server_pid` and waits (up to IPC_SEND_RECEIVE_TIMEOUT_MS,
 * then -ETIMEDOUT) for the reply to this very request (matched by sequence number). Replies to
 * earlier ipc_send calls that arrive first are kept (up to IPC_MAX_STASHED per connection, beyond
 * that the call fails with -ENOBUFS) for later ipc_receive calls.
 * Returns 0 (the reply's status is in reply->status), or -errno: -ESRCH no server registered with
 * that pid in the runtime directory; -ECONNREFUSED it is registered but nobody accepts on its
 * socket; -EMSGSIZE inline data over IPC_MAX_INLINE, or reply data over the buffer given;
 * -EINVAL bad flags or arguments; -EBADF unknown capability id; -EPROTO malformed reply or the
 * server refused to take a shared capability (reply->status has its reason when available);
 * -ECONNRESET/-EPIPE the server went away; -ETIMEDOUT; -EMFILE/-ENOBUFS table full.
 */
int ipc_send_receive(pid_t server_pid, ipc_message_t *msg, ipc_message_t *reply);

/* Sends `msg` without waiting for its reply (collect it with ipc_receive). Same errors as
 * ipc_send_receive for the sending half. Sharing a capability for the first time does wait for
 * the server's answer to the share (the handle is needed before the message can be encoded). */
int ipc_send(pid_t server_pid, ipc_message_t *msg);

/* Receives the next reply from `server_pid` (a stashed one first), waiting up to `timeout_ms`
 * (negative: forever; 0: only what is there already, else -ETIMEDOUT). Replies come in the order
 * the server answered; a request refused because its queue was full (status EBUSY) is answered
 * at once and may overtake earlier requests: use ipc_send_seq / ipc_receive_seq to match them. */
int ipc_receive(pid_t server_pid, ipc_message_t *reply, int timeout_ms);

/* As ipc_send and ipc_receive, also giving the sequence number of the request sent / of the
 * request the reply answers (either pointer may be NULL). */
int ipc_send_seq(pid_t server_pid, ipc_message_t *msg, uint32_t *sequence);
int ipc_receive_seq(pid_t server_pid, ipc_message_t *reply, int timeout_ms, uint32_t *sequence);

/*
 * Creates a shared-memory capability holding a copy of `size` bytes at `buffer` (size >= 1).
 * It is a memfd sealed against shrinking, growing and writing: receivers see exactly these bytes,
 * and nobody, the caller included, can change them later. Returns a capability id >= 1 (local to
 * this process), or -errno (-EINVAL size 0 or buffer NULL; -EMFILE IPC_MAX_CAPS alive already;
 * memfd_create/fcntl errors). The first message naming the id to a given server passes the memfd
 * to that server (MSG_IPC_SHARE with SCM_RIGHTS; the server answers with a handle, which the
 * library caches and puts on the wire instead of the id). A server refusing it: -EPROTO.
 */
int create_shared_memory_cap(const void *buffer, size_t size);

/* Forgets a capability: tells every connected server it was shared with to release its handle
 * (MSG_IPC_RELEASE, waiting for each answer), then closes the memfd. Returns 0 or -EBADF. */
int ipc_release_shared_memory_cap(int cap);

/* Sets the runtime directory for connections opened from now on (NULL: back to the default,
 * $LIMITLESS_RUNTIME_DIR or /run/limitless). Returns 0 or -ENAMETOOLONG (the socket paths
 * must fit in a sockaddr_un). Existing connections are kept. */
int ipc_set_runtime_dir(const char *directory);

/* The runtime directory in use. */
const char *ipc_runtime_dir(void);

/* Closes the cached connection to `server_pid` (the server frees the handles of capabilities
 * shared on it; they are shared again if used again). Returns 0, or -ENOENT if none was open. */
int ipc_close(pid_t server_pid);

/*
 * Shared-memory rings (the C side of IPCClient.attachRing). A server that offers them
 * (IPCServer.Configuration.maxRings) creates, for one connection, a sealed memfd with a request
 * ring and a reply ring (the layout of Sources/IPC/RingLayout.swift) and serves it on a thread of
 * its own with the same handler as socket messages. A round trip then costs two cache-line
 * transfers and no system call while both sides spin (each side spins about 10 us, then sleeps
 * on a futex, so an idle ring costs no CPU).
 *
 * ipc_ring_attach: asks `server_pid` for a ring pair over the library's connection to it.
 * slot_size (bytes per slot, a power of two; 8 are the slot's stamp, 64 the message header, the
 * rest inline data) and capacity (slots per ring, a power of two) may be 0 for the server's
 * defaults (256 and 4: a synchronous pair never has more than one request in flight, and a ring
 * that cycles through few slots keeps them in L1). Returns 0 and *ring, or -errno: -ENOTSUP the server offers no rings,
 * -EBUSY it has none left or this connection has one already (one ring per connection, until
 * ipc_close), -EINVAL a layout it does not accept (slot_size < 72, above its maximum), -EPROTO a
 * memfd that fails validation (seals, size, headers, indices), and ipc_send_receive's errors.
 *
 * ipc_ring_send_receive: as ipc_send_receive (same msg and reply conventions, same timeout), over
 * the ring. IPC_FLAG_SHARED works: the capability is shared over the ring's connection first, and
 * its handle is valid on the ring. A request whose header and inline data do not fit a slot goes
 * over the socket; a reply too large for a slot comes on the socket (the ring carries a marker).
 * Errors besides ipc_send_receive's: -EPROTO the server broke the ring's rules (impossible
 * indices, a malformed reply); -ECONNRESET the server or the connection (ipc_close) went away.
 *
 * ipc_ring_detach: unmaps and frees the ring; the server's ring thread ends when the connection
 * closes. Not thread-safe, like the rest of the library: one thread per ring at a time.
 */
typedef struct ipc_ring ipc_ring_t;

typedef struct ipc_ring_stats {
    uint64_t exchanges;          /* replies received over the ring */
    uint64_t replies_on_socket;  /* of those, replies too large for a slot, read from the socket */
    uint64_t sleeps;             /* futex waits for a reply */
    uint64_t wakeups;            /* futex wakes of the server's ring thread */
} ipc_ring_stats_t;

int ipc_ring_attach(pid_t server_pid, uint32_t slot_size, uint32_t capacity, ipc_ring_t **ring);
int ipc_ring_send_receive(ipc_ring_t *ring, ipc_message_t *msg, ipc_message_t *reply);
int ipc_ring_detach(ipc_ring_t *ring);
/* How long ipc_ring_send_receive spins for a reply before sleeping (default 10000 ns). */
void ipc_ring_set_spin_ns(ipc_ring_t *ring, uint64_t spin_ns);
ipc_ring_stats_t ipc_ring_stats(const ipc_ring_t *ring);

/* A description of a -errno (or errno) returned by this library, or of a reply status. */
const char *ipc_strerror(int error);

#ifdef __cplusplus
}
#endif

#endif /* LIMITLESS_IPC_H */
