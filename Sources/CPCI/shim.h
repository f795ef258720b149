// libpci (Debian: libpci-dev), used for enumeration and for names from the pci.ids database.
//
// Two things Swift cannot do with libpci directly are done here:
// - pci_lookup_name is variadic, so the lookups we use are wrapped;
// - libpci's default error handler exits the process ("write error message and quit"). A
//   server must not die because sysfs held something unexpected, so scans run under a handler
//   that records the message and unwinds to the caller, which reports it as an error.
#pragma once
#include <pci/pci.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

// Function-local statics: file-scope statics in an imported header are not emitted by Swift.
static inline jmp_buf **CPCI_guard_slot(void) { static __thread jmp_buf *slot; return &slot; }
static inline char *CPCI_error_buffer(void) { static __thread char buffer[256]; return buffer; }
#define CPCI_guard (*CPCI_guard_slot())
#define CPCI_last_error (CPCI_error_buffer())

static void CPCI_error_handler(char *message, ...) {
    va_list arguments;
    va_start(arguments, message);
    vsnprintf(CPCI_last_error, 256, message, arguments);
    va_end(arguments);
    if (CPCI_guard) longjmp(*CPCI_guard, 1);
    abort();
}

static void CPCI_quiet_handler(char *message, ...) { (void)message; }

static inline const char *CPCI_error_message(void) { return CPCI_last_error; }

/// Creates an access handle reading `sysfs_bus_pci` (normally /sys/bus/pci), initialises it and
/// scans the bus. Returns NULL with CPCI_error_message() set on failure.
static inline struct pci_access *CPCI_open_and_scan(const char *sysfs_bus_pci, const char *ids_file) {
    struct pci_access *access = pci_alloc();
    if (!access) { snprintf(CPCI_last_error, 256, "pci_alloc failed"); return NULL; }
    access->error = CPCI_error_handler;
    access->warning = CPCI_quiet_handler;
    access->debug = CPCI_quiet_handler;
    access->method = PCI_ACCESS_SYS_BUS_PCI;
    jmp_buf environment;
    CPCI_guard = &environment;
    if (setjmp(environment)) {
        CPCI_guard = NULL;
        return NULL;  // The half-initialised handle is leaked on purpose: libpci state is unknown here.
    }
    pci_set_param(access, "sysfs.path", (char *)sysfs_bus_pci);
    if (ids_file) pci_set_name_list_path(access, (char *)ids_file, 0);
    pci_init(access);
    pci_scan_bus(access);
    CPCI_guard = NULL;
    return access;
}

/// pci_fill_info under the same guard. Returns -1 on a libpci error.
static inline int CPCI_fill(struct pci_dev *device, int flags) {
    jmp_buf environment;
    CPCI_guard = &environment;
    if (setjmp(environment)) { CPCI_guard = NULL; return -1; }
    int known = pci_fill_info(device, flags);
    CPCI_guard = NULL;
    return known;
}

static inline char *CPCI_lookup_vendor(struct pci_access *a, char *buf, int size, unsigned vendor) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_VENDOR | PCI_LOOKUP_NO_NUMBERS, vendor);
}
static inline char *CPCI_lookup_device(struct pci_access *a, char *buf, int size, unsigned vendor, unsigned device) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_DEVICE | PCI_LOOKUP_NO_NUMBERS, vendor, device);
}
static inline char *CPCI_lookup_class(struct pci_access *a, char *buf, int size, unsigned class_id) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_CLASS | PCI_LOOKUP_NO_NUMBERS, class_id);
}

static const int CPCI_FILL_IDENT = PCI_FILL_IDENT;
static const int CPCI_FILL_CLASS = PCI_FILL_CLASS;
static const int CPCI_FILL_CLASS_EXT = PCI_FILL_CLASS_EXT;
static const int CPCI_FILL_SUBSYS = PCI_FILL_SUBSYS;
