/* alloc_counter.so: an LD_PRELOAD library counting a process's heap allocations (every malloc,
 * calloc, realloc, reallocarray, posix_memalign, aligned_alloc, memalign, valloc and pvalloc call)
 * and, in a Swift process, its swift_retain / swift_release calls from outside libswiftCore, with atomic counters in a
 * shared file (alloc_counter.h) that a test reads while the process runs. Built by
 * Tests/BenchTests/HotPathAllocationTests.swift with the system's cc; never linked into the product.
 *
 * Allocations are passed on to glibc's own entry points (__libc_malloc and friends), so counting
 * needs no dlsym at start-up (dlsym itself allocates). A reader that sets trace_allocations or
 * trace_retains to N gets the backtraces (backtrace_symbols_fd, stderr) of the next N.
 * The counters sit at the start of the file named by LIMITLESS_ALLOC_COUNTERS (created if need
 * be); without that variable they live in this process only. */
#define _GNU_SOURCE
#include "alloc_counter.h"
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);
extern void __libc_free(void *);

static struct limitless_alloc_counters private_counters;
static struct limitless_alloc_counters *counters = &private_counters;
/* Set while this thread prints a backtrace (which may allocate: the unwinder's first use). */
static __thread int tracing __attribute__((tls_model("initial-exec")));

#define ADD(field, n) __atomic_fetch_add(&counters->field, (n), __ATOMIC_RELAXED)

static void say(const char *text) {
    size_t length = strlen(text);
    while (length > 0) {
        ssize_t n = write(2, text, length);
        if (n <= 0) return;
        text += n;
        length -= (size_t)n;
    }
}

static void trace(int64_t *budget, const char *what) {
    if (tracing || __atomic_load_n(budget, __ATOMIC_RELAXED) <= 0) return;
    if (__atomic_fetch_sub(budget, 1, __ATOMIC_RELAXED) <= 0) return;
    tracing = 1;
    void *frames[48];
    int count = backtrace(frames, 48);
    say("alloc_counter: backtrace of ");
    say(what);
    say(":\n");
    backtrace_symbols_fd(frames, count, 2);
    tracing = 0;
}

static inline void *counted(void *pointer) {
    ADD(allocations, 1);
    trace(&counters->trace_allocations, "an allocation");
    return pointer;
}

void *malloc(size_t size) { return counted(__libc_malloc(size)); }
void *calloc(size_t count, size_t size) { return counted(__libc_calloc(count, size)); }
void *realloc(void *pointer, size_t size) { return counted(__libc_realloc(pointer, size)); }
void *memalign(size_t alignment, size_t size) { return counted(__libc_memalign(alignment, size)); }
void *valloc(size_t size) { return counted(__libc_valloc(size)); }
void *pvalloc(size_t size) { return counted(__libc_pvalloc(size)); }

void *reallocarray(void *pointer, size_t count, size_t size) {
    size_t bytes;
    if (__builtin_mul_overflow(count, size, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return counted(__libc_realloc(pointer, bytes));
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0 || alignment == 0) return EINVAL;
    void *pointer = counted(__libc_memalign(alignment, size));
    if (pointer == NULL) return ENOMEM;
    *result = pointer;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t size) {
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    return counted(__libc_memalign(alignment, size));
}

void free(void *pointer) {
    if (pointer != NULL) ADD(frees, 1);
    __libc_free(pointer);
}

/* Retains: swift_retain and friends interposed by name. Swift code calls them through the PLT,
 * so this library's definitions win for every call from the program and from shared libraries
 * other than libswiftCore (whose calls to itself are bound directly and stay uncounted). The
 * runtime's own instrumentation hooks (_swift_retain, ..., behind
 * _swift_enableSwizzlingOfAllocationAndRefCountingFunctions_forInstrumentsOnly) are no use here:
 * in Swift 6.3 their adapter masks the object pointer before the hook sees it, so a tagged
 * non-pointer bridge value (a small String) reaches the real retain as a bad pointer and
 * crashes. Each name resolves its real definition (RTLD_NEXT) on first use. */
#define REAL(name, type)                                        \
    static type resolved;                                       \
    type real = __atomic_load_n(&resolved, __ATOMIC_RELAXED);   \
    if (real == NULL) {                                         \
        real = (type)dlsym(RTLD_NEXT, name);                    \
        __atomic_store_n(&resolved, real, __ATOMIC_RELAXED);    \
    }

typedef void *(*retain_fn)(void *);
typedef void *(*retain_n_fn)(void *, uint32_t);
typedef void (*release_fn)(void *);
typedef void (*release_n_fn)(void *, uint32_t);

static inline void counted_retain(void) {
    ADD(retains, 1);
    trace(&counters->trace_retains, "a retain");
}

#define COUNTED_RETAIN(name)                \
    void *name(void *object) {              \
        REAL(#name, retain_fn);             \
        counted_retain();                   \
        return real(object);                \
    }
#define COUNTED_RETAIN_N(name)              \
    void *name(void *object, uint32_t n) {  \
        REAL(#name, retain_n_fn);           \
        counted_retain();                   \
        return real(object, n);             \
    }
#define COUNTED_RELEASE(name)               \
    void name(void *object) {               \
        REAL(#name, release_fn);            \
        ADD(releases, 1);                   \
        real(object);                       \
    }
#define COUNTED_RELEASE_N(name)             \
    void name(void *object, uint32_t n) {   \
        REAL(#name, release_n_fn);          \
        ADD(releases, 1);                   \
        real(object, n);                    \
    }

COUNTED_RETAIN(swift_retain)
COUNTED_RETAIN_N(swift_retain_n)
COUNTED_RETAIN(swift_bridgeObjectRetain)
COUNTED_RETAIN_N(swift_bridgeObjectRetain_n)
COUNTED_RELEASE(swift_release)
COUNTED_RELEASE_N(swift_release_n)
COUNTED_RELEASE(swift_bridgeObjectRelease)
COUNTED_RELEASE_N(swift_bridgeObjectRelease_n)

__attribute__((constructor)) static void start_counting(void) {
    /* The unwinder loads on first use: do it now, outside any measured window. */
    void *frame[2];
    tracing = 1;
    (void)backtrace(frame, 2);
    tracing = 0;
    const char *path = getenv("LIMITLESS_ALLOC_COUNTERS");
    if (path != NULL && path[0] != '\0') {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0) {
            if (ftruncate(fd, 4096) == 0) {
                void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (page != MAP_FAILED) {
                    struct limitless_alloc_counters *shared = page;
                    memset(shared, 0, sizeof *shared);
                    shared->pid = (uint64_t)getpid();
                    counters = shared;
                    __atomic_store_n(&shared->magic, LIMITLESS_ALLOC_MAGIC, __ATOMIC_RELEASE);
                }
            }
            close(fd);
        }
        if (counters == &private_counters) say("alloc_counter: could not map LIMITLESS_ALLOC_COUNTERS; counting privately\n");
    }
    counters->retain_hooks = dlsym(RTLD_NEXT, "swift_retain") != NULL;
}
