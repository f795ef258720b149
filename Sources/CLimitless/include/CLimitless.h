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
