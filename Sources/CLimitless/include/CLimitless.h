// CLimitless: the project's one C shim. Everything Swift cannot (or must not) do itself lives
// here as small static inline functions: volatile MMIO accesses, ioctl request numbers that are
// macros in the kernel headers, and calls Glibc's Swift overlay does not export.
#pragma once

#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/vfio.h>
#include <linux/pci_regs.h>

// MARK: - Volatile MMIO
// Device registers must be accessed with exactly one load or store of the stated width, never
// merged, split, reordered by the compiler or elided. Plain Swift pointer loads give no such
// promise, so every MMIO access in the project goes through these.

static inline uint8_t CL_mmio_read8(const void *base, size_t offset) {
    return *(const volatile uint8_t *)((const char *)base + offset);
}
static inline uint16_t CL_mmio_read16(const void *base, size_t offset) {
    return *(const volatile uint16_t *)((const char *)base + offset);
}
static inline uint32_t CL_mmio_read32(const void *base, size_t offset) {
    return *(const volatile uint32_t *)((const char *)base + offset);
}
static inline uint64_t CL_mmio_read64(const void *base, size_t offset) {
    return *(const volatile uint64_t *)((const char *)base + offset);
}
static inline void CL_mmio_write8(void *base, size_t offset, uint8_t value) {
    *(volatile uint8_t *)((char *)base + offset) = value;
}
static inline void CL_mmio_write16(void *base, size_t offset, uint16_t value) {
    *(volatile uint16_t *)((char *)base + offset) = value;
}
static inline void CL_mmio_write32(void *base, size_t offset, uint32_t value) {
    *(volatile uint32_t *)((char *)base + offset) = value;
}
static inline void CL_mmio_write64(void *base, size_t offset, uint64_t value) {
    *(volatile uint64_t *)((char *)base + offset) = value;
}

// Ordering between DMA memory (ordinary cacheable RAM shared with a device) and MMIO doorbells:
// a driver fills a submission entry, then rings a doorbell; the entry must be globally visible
// first. A full fence is what Linux's wmb()/mb() amount to on x86 for this purpose.
static inline void CL_memory_barrier(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void CL_compiler_barrier(void) { __asm__ __volatile__("" ::: "memory"); }

// Volatile access to DMA memory a device writes behind the compiler's back (completion entries).
static inline uint16_t CL_dma_read16(const void *p) { return *(const volatile uint16_t *)p; }
static inline uint32_t CL_dma_read32(const void *p) { return *(const volatile uint32_t *)p; }
static inline uint64_t CL_dma_read64(const void *p) { return *(const volatile uint64_t *)p; }

// MARK: - ioctl
// ioctl(2) is variadic; Swift cannot call it. Two fixed-signature forms cover every use.
static inline int CL_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
static inline int CL_ioctl_val(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }

// VFIO request numbers (macros built from _IO in <linux/vfio.h>).
static const unsigned long CL_VFIO_GET_API_VERSION = VFIO_GET_API_VERSION;
static const unsigned long CL_VFIO_CHECK_EXTENSION = VFIO_CHECK_EXTENSION;
static const unsigned long CL_VFIO_SET_IOMMU = VFIO_SET_IOMMU;
static const unsigned long CL_VFIO_GROUP_GET_STATUS = VFIO_GROUP_GET_STATUS;
static const unsigned long CL_VFIO_GROUP_SET_CONTAINER = VFIO_GROUP_SET_CONTAINER;
static const unsigned long CL_VFIO_GROUP_UNSET_CONTAINER = VFIO_GROUP_UNSET_CONTAINER;
static const unsigned long CL_VFIO_GROUP_GET_DEVICE_FD = VFIO_GROUP_GET_DEVICE_FD;
static const unsigned long CL_VFIO_DEVICE_GET_INFO = VFIO_DEVICE_GET_INFO;
static const unsigned long CL_VFIO_DEVICE_GET_REGION_INFO = VFIO_DEVICE_GET_REGION_INFO;
static const unsigned long CL_VFIO_DEVICE_GET_IRQ_INFO = VFIO_DEVICE_GET_IRQ_INFO;
static const unsigned long CL_VFIO_DEVICE_SET_IRQS = VFIO_DEVICE_SET_IRQS;
static const unsigned long CL_VFIO_DEVICE_RESET = VFIO_DEVICE_RESET;
static const unsigned long CL_VFIO_IOMMU_GET_INFO = VFIO_IOMMU_GET_INFO;
static const unsigned long CL_VFIO_IOMMU_MAP_DMA = VFIO_IOMMU_MAP_DMA;
static const unsigned long CL_VFIO_IOMMU_UNMAP_DMA = VFIO_IOMMU_UNMAP_DMA;

// The layouts the Swift side relies on, checked against the kernel headers at build time.
_Static_assert(sizeof(struct vfio_group_status) == 8, "vfio_group_status layout");
_Static_assert(sizeof(struct vfio_device_info) >= 16, "vfio_device_info layout");
_Static_assert(sizeof(struct vfio_region_info) == 32, "vfio_region_info layout");
_Static_assert(sizeof(struct vfio_irq_info) == 16, "vfio_irq_info layout");
_Static_assert(sizeof(struct vfio_irq_set) == 20, "vfio_irq_set header layout");
_Static_assert(sizeof(struct vfio_iommu_type1_dma_map) == 32, "vfio_iommu_type1_dma_map layout");
_Static_assert(sizeof(struct vfio_iommu_type1_dma_unmap) == 24, "vfio_iommu_type1_dma_unmap layout");

// MARK: - Calls the Swift Glibc overlay does not export
static inline int CL_errno(void) { return errno; }
static inline void CL_set_errno(int value) { errno = value; }
static inline int CL_eventfd(unsigned int initval, int flags) { return eventfd(initval, flags); }
// memfd_create needs _GNU_SOURCE, which would make this module's libc declarations differ from
// Glibc's module; the raw system call avoids that.
static inline int CL_memfd_create(const char *name, unsigned int flags) { return (int)syscall(SYS_memfd_create, name, flags); }

static const int CL_EFD_CLOEXEC = EFD_CLOEXEC;
static const int CL_EFD_NONBLOCK = EFD_NONBLOCK;
static const int CL_MAP_HUGETLB = MAP_HUGETLB;
static const int CL_MAP_POPULATE = MAP_POPULATE;
static const int CL_MAP_LOCKED = MAP_LOCKED;
static const int CL_MAP_HUGE_2MB = (21 << 26);  // log2(2 MiB) << MAP_HUGE_SHIFT
static inline int CL_is_map_failed(const void *p) { return p == MAP_FAILED; }
static const int CL_RLIMIT_MEMLOCK = RLIMIT_MEMLOCK;

static inline int CL_getrlimit_memlock(unsigned long long *soft, unsigned long long *hard) {
    struct rlimit r;
    if (getrlimit(RLIMIT_MEMLOCK, &r) != 0) return -1;
    *soft = r.rlim_cur == RLIM_INFINITY ? ~0ULL : (unsigned long long)r.rlim_cur;
    *hard = r.rlim_max == RLIM_INFINITY ? ~0ULL : (unsigned long long)r.rlim_max;
    return 0;
}

// MARK: - Ring
// Shared-memory rings (Sources/IPC/SharedRing*.swift) and the IPC benchmark. Futexes are the
// process-shared kind (no FUTEX_PRIVATE_FLAG): the word lives in a memfd two processes map.
#include <linux/futex.h>
#include <time.h>

/// Sleeps while *word == expected, for at most timeout_ns (negative: no limit). Returns 0 when
/// woken, or -errno: -EAGAIN (the word already differed), -ETIMEDOUT, -EINTR.
static inline int CL_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts;
    struct timespec *tp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tp = &ts;
    }
    long r = syscall(SYS_futex, word, FUTEX_WAIT, expected, tp, NULL, 0);
    return r == 0 ? 0 : -errno;
}

/// Wakes up to `count` sleepers on `word`; returns how many woke, or -errno.
static inline int CL_futex_wake(uint32_t *word, int count) {
    long r = syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
    return r >= 0 ? (int)r : -errno;
}

/// One spin-wait hint: on x86 `pause` lets the sibling hyperthread run and avoids the
/// memory-order machine clear when the awaited line finally changes.
static inline void CL_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

/// The time-stamp counter (x86), the virtual counter (arm64), else CLOCK_MONOTONIC nanoseconds.
/// `CL_cycles_ordered` waits for earlier instructions first (rdtscp), for the end of a timed span.
static inline uint64_t CL_cycles(void) {
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
    uint64_t v; __asm__ __volatile__("mrs %0, cntvct_el0" : "=r"(v)); return v;
#else
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
#endif
}
static inline uint64_t CL_cycles_ordered(void) {
#if defined(__x86_64__)
    unsigned int aux; return __builtin_ia32_rdtscp(&aux);
#else
    return CL_cycles();
#endif
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call on the usual clock sources).
static inline uint64_t CL_monotonic_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/// CPU affinity through the raw system calls: the glibc wrappers and CPU_SET need _GNU_SOURCE.
/// Covers CPUs 0..1023. Pins the calling thread (and what it later forks/spawns) to `cpu`.
static inline int CL_pin_to_cpu(int cpu) {
    unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {0};
    if (cpu < 0 || cpu >= 1024) return -EINVAL;
    mask[cpu / (8 * sizeof(unsigned long))] = 1ul << (cpu % (8 * sizeof(unsigned long)));
    long r = syscall(SYS_sched_setaffinity, 0, sizeof(mask), mask);
    return r == 0 ? 0 : -errno;
}
/// Writes up to `capacity` CPU numbers this thread may run on into `cpus`; returns how many
/// there are (may exceed capacity), or -errno.
static inline int CL_allowed_cpus(int *cpus, int capacity) {
    unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {0};
    long r = syscall(SYS_sched_getaffinity, 0, sizeof(mask), mask);
    if (r < 0) return -errno;
    int n = 0;
    for (int cpu = 0; cpu < 1024; cpu++) {
        if (mask[cpu / (8 * sizeof(unsigned long))] & (1ul << (cpu % (8 * sizeof(unsigned long))))) {
            if (n < capacity) cpus[n] = cpu;
            n++;
        }
    }
    return n;
}

// MARK: - IPC
// Unix-socket helpers for the IPC module (Sources/IPC). The CMSG_* accessors are macros Swift cannot
// call; SO_PEERCRED's `struct ucred`, sendmmsg, memfd sealing and MSG_CMSG_CLOEXEC sit behind
// _GNU_SOURCE, which this header must not define (see memfd_create above), so the values come from
// <linux/fcntl.h>, <linux/memfd.h> and <bits/socket.h> as numbers, and the calls go through
// syscall() or plain POSIX ones.
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/epoll.h>  // not in the Glibc module map; the server loop needs it
#include <fcntl.h>

/// Most descriptors one message may carry (the kernel's SCM_MAX_FD, include/net/scm.h).
static const int CL_IPC_SCM_MAX_FD = 253;
static const int CL_MSG_CMSG_CLOEXEC = 0x40000000;   // bits/socket.h
static const int CL_MSG_TRUNC = MSG_TRUNC;
static const int CL_MSG_CTRUNC = MSG_CTRUNC;
static const int CL_MSG_DONTWAIT = MSG_DONTWAIT;
static const int CL_MSG_NOSIGNAL = MSG_NOSIGNAL;
static const int CL_SOCK_SEQPACKET = SOCK_SEQPACKET;
static const int CL_SOCK_CLOEXEC = SOCK_CLOEXEC;
static const int CL_SOCK_NONBLOCK = SOCK_NONBLOCK;
static const unsigned int CL_MFD_CLOEXEC = 0x0001U;        // linux/memfd.h
static const unsigned int CL_MFD_ALLOW_SEALING = 0x0002U;  // linux/memfd.h
static const int CL_F_ADD_SEALS = 1033;                    // linux/fcntl.h: F_LINUX_SPECIFIC_BASE + 9
static const int CL_F_GET_SEALS = 1034;                    // F_LINUX_SPECIFIC_BASE + 10
static const int CL_F_SEAL_SEAL = 0x0001;
static const int CL_F_SEAL_SHRINK = 0x0002;
static const int CL_F_SEAL_GROW = 0x0004;
static const int CL_F_SEAL_WRITE = 0x0008;

/// fcntl(2) is variadic; this is its integer-argument form (F_ADD_SEALS, F_GET_SEALS, F_GETFD).
static inline int CL_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }

/// The peer's pid, uid and gid as the kernel recorded them at connect() (SO_PEERCRED, socket(7)).
/// Declared locally because `struct ucred` needs _GNU_SOURCE; the layout is the kernel's.
static inline int CL_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct { int32_t pid; uint32_t uid; uint32_t gid; } cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    if (len != sizeof(cred)) { errno = EPROTO; return -1; }
    *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
    return 0;
}

/// Sends one datagram made of two parts (header, payload) and, if nfds > 0, the descriptors in
/// one SCM_RIGHTS message. Returns sendmsg's result.
static inline long CL_ipc_send(int sock, const void *head, size_t headLen, const void *body, size_t bodyLen,
                               const int *fds, int nfds, int flags) {
    struct iovec iov[2] = { { (void *)head, headLen }, { (void *)body, bodyLen } };
    union { char buf[CMSG_SPACE(sizeof(int) * 253)]; struct cmsghdr align; } control;
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = bodyLen > 0 ? 2 : 1;
    if (nfds > 0) {
        if (nfds > 253) { errno = EINVAL; return -1; }
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        __builtin_memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    return (long)sendmsg(sock, &msg, flags);
}

/// Receives one datagram into `buf`; descriptors that came with it are stored in `fds` (up to
/// `maxfds`, at most 253) and counted in `*nfds`; any beyond `maxfds` are closed here so none
/// leak. The control buffer holds 253 (the kernel's SCM_MAX_FD, which a sender cannot exceed: a
/// standby's activation carries every capability at once); it lives on the stack, nothing is
/// allocated.
/// `*msgFlags` receives msg_flags (MSG_TRUNC: the datagram was longer than `len`).
/// Descriptors are received close-on-exec.
static inline long CL_ipc_recv(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds,
                               int *msgFlags, int flags) {
    struct iovec iov = { buf, len };
    union { char buf[CMSG_SPACE(sizeof(int) * 253)]; struct cmsghdr align; } control;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    *nfds = 0;
    *msgFlags = 0;
    long n = (long)recvmsg(sock, &msg, flags | 0x40000000 /* MSG_CMSG_CLOEXEC */);
    if (n < 0) return n;
    *msgFlags = msg.msg_flags;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            __builtin_memcpy(&fd, data + i * sizeof(int), sizeof(int));
            if (*nfds < maxfds) fds[(*nfds)++] = fd; else close(fd);
        }
    }
    return n;
}

/// sendmmsg(2) through syscall(): `count` datagrams of one header each plus an optional payload
/// (`bodies[i]` may be NULL when `bodyLens[i]` is 0), one system call and one wakeup of the
/// receiver per call. At most 64 per call; returns how many were sent, or -1.
static inline int CL_ipc_sendmmsg(int sock, const void *const *heads, const size_t *headLens,
                                  const void *const *bodies, const size_t *bodyLens, unsigned int count, int flags) {
    struct { struct msghdr hdr; unsigned int len; } msgs[64];
    struct iovec iov[64][2];
    if (count > 64) count = 64;
    for (unsigned int i = 0; i < count; i++) {
        iov[i][0].iov_base = (void *)heads[i]; iov[i][0].iov_len = headLens[i];
        iov[i][1].iov_base = (void *)bodies[i]; iov[i][1].iov_len = bodyLens[i];
        __builtin_memset(&msgs[i], 0, sizeof(msgs[i]));
        msgs[i].hdr.msg_iov = iov[i];
        msgs[i].hdr.msg_iovlen = bodyLens[i] > 0 ? 2 : 1;
    }
    return (int)syscall(SYS_sendmmsg, sock, msgs, count, flags);
}

/// accept4(2) (a GNU declaration) through syscall(): the new socket is non-blocking and
/// close-on-exec from the start, so a concurrent fork+exec never inherits it.
static inline int CL_accept_nonblocking(int sock) {
    return (int)syscall(SYS_accept4, sock, (void *)0, (void *)0, SOCK_CLOEXEC | SOCK_NONBLOCK);
}

// MARK: - ServerKit
// Privilege drop for servers (Sources/ServerKit/PrivilegeDrop.swift): no_new_privs and a seccomp
// filter. prctl(2) is variadic, and the syscall numbers are per-architecture macros, so both stay
// here; the BPF program itself is built in Swift.
#include <sys/prctl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

/// prctl(PR_SET_NO_NEW_PRIVS, 1): execve can never again grant privileges (setuid bits, file
/// capabilities). Required before an unprivileged process may install a seccomp filter.
static inline int CL_sk_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }
/// 1 if no_new_privs is set, 0 if not, -1 on error.
static inline int CL_sk_get_no_new_privs(void) { return prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); }

/// Installs a seccomp-bpf filter on the calling thread (SECCOMP_SET_MODE_FILTER, with TSYNC so
/// every thread of the process gets it). Returns 0, or -1 with errno set.
static inline int CL_sk_seccomp_install(const struct sock_filter *filter, unsigned short count) {
    struct sock_fprog program = { count, (struct sock_filter *)filter };
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &program);
}

/// The AUDIT_ARCH_* value of the architecture this is compiled for (seccomp_data.arch), or 0.
static inline uint32_t CL_sk_audit_arch(void) {
#if defined(__x86_64__)
    return AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
    return AUDIT_ARCH_AARCH64;
#else
    return 0;
#endif
}

static const uint32_t CL_SK_SECCOMP_RET_ALLOW = SECCOMP_RET_ALLOW;
static const uint32_t CL_SK_SECCOMP_RET_ERRNO = SECCOMP_RET_ERRNO;
static const uint32_t CL_SK_SECCOMP_RET_KILL_PROCESS = SECCOMP_RET_KILL_PROCESS;
static const uint32_t CL_SK_SECCOMP_RET_USER_NOTIF = SECCOMP_RET_USER_NOTIF;

/// `CL_sk_seccomp_install` with SECCOMP_FILTER_FLAG_NEW_LISTENER (Linux 5.0; with TSYNC it needs
/// TSYNC_ESRCH, 5.7): calls the filter answers SECCOMP_RET_USER_NOTIF for wait until the holder
/// of the returned listener descriptor decides. Returns the listener (close-on-exec), or -1.
static inline int CL_sk_seccomp_install_listener(const struct sock_filter *filter, unsigned short count) {
    struct sock_fprog program = { count, (struct sock_filter *)filter };
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                        SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_TSYNC_ESRCH, &program);
}

/// SECCOMP_IOCTL_NOTIF_RECV: one waiting call's id, system call number and arguments (6).
/// Returns 0, or -1 with errno (ENOENT: the caller died meanwhile).
static inline int CL_sk_notif_receive(int listener, uint64_t *id, int32_t *nr, uint64_t *args) {
    struct seccomp_notif notif;
    __builtin_memset(&notif, 0, sizeof notif);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &notif) != 0) return -1;
    *id = notif.id;
    *nr = notif.data.nr;
    for (int i = 0; i < 6; i++) args[i] = notif.data.args[i];
    return 0;
}

/// SECCOMP_IOCTL_NOTIF_SEND: let the call run as made (SECCOMP_USER_NOTIF_FLAG_CONTINUE, Linux
/// 5.5), or fail it with `errnum`. Returns 0, or -1 with errno.
static inline int CL_sk_notif_respond(int listener, uint64_t id, int allow, int errnum) {
    struct seccomp_notif_resp response;
    __builtin_memset(&response, 0, sizeof response);
    response.id = id;
    if (allow) response.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE; else response.error = -errnum;
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &response);
}

/// The system call number of `name` on this architecture ("read", "openat", ...), or -1 for a
/// call this architecture does not have (aarch64 has no open, mkdir or poll).
static inline long CL_sk_syscall_number(const char *name) {
#define CL_SK_NR(n) if (__builtin_strcmp(name, #n) == 0) return __NR_##n;
    CL_SK_NR(read) CL_SK_NR(write) CL_SK_NR(readv) CL_SK_NR(writev) CL_SK_NR(pread64) CL_SK_NR(pwrite64)
    CL_SK_NR(close) CL_SK_NR(fstat) CL_SK_NR(newfstatat) CL_SK_NR(statx) CL_SK_NR(lseek)
    CL_SK_NR(mmap) CL_SK_NR(munmap) CL_SK_NR(mprotect) CL_SK_NR(mremap) CL_SK_NR(madvise) CL_SK_NR(brk)
    CL_SK_NR(futex) CL_SK_NR(clock_gettime) CL_SK_NR(clock_getres) CL_SK_NR(clock_nanosleep) CL_SK_NR(nanosleep)
    CL_SK_NR(gettimeofday) CL_SK_NR(getpid) CL_SK_NR(gettid) CL_SK_NR(getppid) CL_SK_NR(getuid) CL_SK_NR(geteuid)
    CL_SK_NR(getgid) CL_SK_NR(getegid) CL_SK_NR(rt_sigaction) CL_SK_NR(rt_sigprocmask) CL_SK_NR(rt_sigreturn)
    CL_SK_NR(sigaltstack) CL_SK_NR(tgkill) CL_SK_NR(exit) CL_SK_NR(exit_group) CL_SK_NR(sched_yield)
    CL_SK_NR(sched_getaffinity) CL_SK_NR(getrandom) CL_SK_NR(ppoll) CL_SK_NR(epoll_create1) CL_SK_NR(epoll_ctl)
    CL_SK_NR(epoll_pwait) CL_SK_NR(eventfd2) CL_SK_NR(fcntl) CL_SK_NR(dup) CL_SK_NR(dup3) CL_SK_NR(pipe2)
    CL_SK_NR(sendmsg) CL_SK_NR(recvmsg) CL_SK_NR(sendmmsg) CL_SK_NR(recvmmsg) CL_SK_NR(sendto) CL_SK_NR(recvfrom)
    CL_SK_NR(accept4) CL_SK_NR(connect) CL_SK_NR(getsockopt) CL_SK_NR(setsockopt) CL_SK_NR(shutdown)
    CL_SK_NR(getsockname) CL_SK_NR(getpeername) CL_SK_NR(socket) CL_SK_NR(set_robust_list) CL_SK_NR(rseq)
    CL_SK_NR(clone) CL_SK_NR(clone3) CL_SK_NR(prlimit64) CL_SK_NR(membarrier) CL_SK_NR(restart_syscall)
    CL_SK_NR(memfd_create) CL_SK_NR(ftruncate) CL_SK_NR(timerfd_create) CL_SK_NR(timerfd_settime)
    CL_SK_NR(timerfd_gettime) CL_SK_NR(signalfd4) CL_SK_NR(ioctl) CL_SK_NR(openat) CL_SK_NR(unlinkat)
    CL_SK_NR(mkdirat) CL_SK_NR(execve) CL_SK_NR(uname) CL_SK_NR(getcwd) CL_SK_NR(readlinkat) CL_SK_NR(bind)
    CL_SK_NR(listen) CL_SK_NR(socketpair) CL_SK_NR(kill) CL_SK_NR(mlock) CL_SK_NR(munlock) CL_SK_NR(msync)
#ifdef __NR_poll
    CL_SK_NR(poll)
#endif
#ifdef __NR_epoll_wait
    CL_SK_NR(epoll_wait)
#endif
#ifdef __NR_open
    CL_SK_NR(open)
#endif
#ifdef __NR_mkdir
    CL_SK_NR(mkdir)
#endif
#ifdef __NR_unlink
    CL_SK_NR(unlink)
#endif
#ifdef __NR_readlink
    CL_SK_NR(readlink)
#endif
#ifdef __NR_pipe
    CL_SK_NR(pipe)
#endif
#ifdef __NR_access
    CL_SK_NR(access)
#endif
#undef CL_SK_NR
    return -1;
}

// MARK: - Supervision
// pidfd_open(2) (Linux 5.3): a descriptor that becomes readable when the process exits.
static inline int CL_pidfd_open(int pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}
