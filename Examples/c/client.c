/*
 * An example C client of a Limitless server, using the seed's calls from limitless_ipc.h.
 *
 *   client SERVER_PID [PATH]
 *
 * 1. MSG_VFS_STAT with the path as inline data (ipc_send_receive), printing the reply;
 * 2. a shared-memory capability holding a block of text, sent with MSG_VFS_WRITE (the library
 *    passes the memfd to the server once and names it by the server's handle afterwards);
 * 3. the same capability again (no second share), then asynchronously: ipc_send + ipc_receive.
 *
 * Output lines are "key: value" so a script (or CAPITests.swift) can check them.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limitless_ipc.h"

static void print_reply(const char *what, const ipc_message_t *reply, const char *data) {
    printf("%s: status=%d (%s) param1=%llu param2=%llu param3=%llu data_size=%u data=\"%.*s\"\n", what,
           (int)reply->status, ipc_strerror(reply->status), (unsigned long long)reply->param1,
           (unsigned long long)reply->param2, (unsigned long long)reply->param3, (unsigned)reply->data_size,
           (int)reply->data_size, data);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SERVER_PID [PATH]\n", argv[0]);
        return 2;
    }
    pid_t server = (pid_t)strtol(argv[1], NULL, 10);
    const char *path = argc > 2 ? argv[2] : "/etc/hostname";
    printf("runtime_dir: %s\n", ipc_runtime_dir());

    /* 1. A synchronous request with inline data. */
    ipc_message_t msg = {0};
    msg.type = MSG_VFS_STAT;
    msg.sender_pid = 1;  /* ignored: the server learns our pid from the kernel (SO_PEERCRED) */
    msg.param1 = 42;
    msg.data_ptr = (uint64_t)(uintptr_t)path;
    msg.data_size = (uint32_t)strlen(path);
    char buffer[256];
    ipc_message_t reply = {0};
    reply.data_ptr = (uint64_t)(uintptr_t)buffer;
    reply.data_size = sizeof(buffer);
    int result = ipc_send_receive(server, &msg, &reply);
    if (result < 0) {
        fprintf(stderr, "ipc_send_receive(MSG_VFS_STAT): %s\n", ipc_strerror(result));
        return 1;
    }
    print_reply("stat", &reply, buffer);

    /* 2. Data by shared memory: sealed, so the server sees exactly these bytes. */
    static const char text[] = "shared hello from C";
    int cap = create_shared_memory_cap(text, sizeof(text) - 1);
    if (cap < 0) {
        fprintf(stderr, "create_shared_memory_cap: %s\n", ipc_strerror(cap));
        return 1;
    }
    printf("cap: %d\n", cap);
    ipc_message_t write = {0};
    write.type = MSG_VFS_WRITE;
    write.flags = IPC_FLAG_SHARED;
    write.data_ptr = (uint64_t)cap;  /* capability id; a byte offset would go in the high 32 bits */
    write.data_size = sizeof(text) - 1;
    reply.data_ptr = (uint64_t)(uintptr_t)buffer;
    reply.data_size = sizeof(buffer);
    result = ipc_send_receive(server, &write, &reply);
    if (result < 0) {
        fprintf(stderr, "ipc_send_receive(MSG_VFS_WRITE): %s\n", ipc_strerror(result));
        return 1;
    }
    print_reply("write", &reply, buffer);

    /* 3. The same capability, asynchronously: ipc_send now, ipc_receive later. */
    write.data_ptr = (uint64_t)cap | (uint64_t)7 << 32;  /* from byte 7: "hello from C" */
    write.data_size = sizeof(text) - 1 - 7;
    result = ipc_send(server, &write);
    if (result < 0) {
        fprintf(stderr, "ipc_send: %s\n", ipc_strerror(result));
        return 1;
    }
    reply.data_ptr = (uint64_t)(uintptr_t)buffer;
    reply.data_size = sizeof(buffer);
    result = ipc_receive(server, &reply, 5000);
    if (result < 0) {
        fprintf(stderr, "ipc_receive: %s\n", ipc_strerror(result));
        return 1;
    }
    print_reply("async", &reply, buffer);

    ipc_release_shared_memory_cap(cap);
    ipc_close(server);
    printf("done\n");
    return 0;
}
