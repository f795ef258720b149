#!/usr/bin/env python3
"""Limitless rig: a small QMP client (standard library only).

Usually called through `Scripts/rig.sh qmp ...`, which picks the transport:
  on the host      --socket .build-rig/qmp.sock   (talks to QEMU directly)
  inside the guest --via $RIG_RUN_DIR/qmp        (request files relayed by the host)

  qmp.py [--socket PATH | --via DIR] COMMAND [KEY=VALUE ...]   one QMP command; VALUE is JSON
                                                               when it parses, else a string
  qmp.py [--socket PATH | --via DIR] hmp 'info pci'            a human monitor command
  qmp.py [--socket PATH | --via DIR] keys ctrl-alt-delete a b  send-key, one call per combo
  qmp.py --socket PATH relay DIR [--pid QEMU_PID] [--log FILE] serve requests from the guest

Prints the command's "return" value as JSON (hmp: the monitor's text). Exit 1 on a QMP error.
"""
import json
import os
import socket
import sys
import time

TIMEOUT = 60.0


def fail(msg):
    sys.stderr.write("rig qmp: %s\n" % msg)
    sys.exit(2)


class QMP:
    def __init__(self, path, timeout=TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.read()  # greeting
        self.execute({"execute": "qmp_capabilities"})

    def read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QEMU closed the QMP connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, request):
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            msg = self.read()
            if "return" in msg or "error" in msg:
                return msg

    def close(self):
        self.sock.close()


def parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_requests(args):
    if not args:
        fail("no command; e.g. qmp query-status, qmp device_del id=nvme0, qmp hmp 'info pci'")
    cmd, rest = args[0], args[1:]
    if cmd == "hmp":
        return [{"execute": "human-monitor-command",
                 "arguments": {"command-line": " ".join(rest)}}]
    if cmd == "keys":
        return [{"execute": "send-key",
                 "arguments": {"keys": [{"type": "qcode", "data": k} for k in combo.split("-")]}}
                for combo in rest]
    if cmd.startswith("{"):
        return [json.loads(cmd)]
    arguments = {}
    for item in rest:
        if "=" not in item:
            fail("argument %r is not KEY=VALUE" % item)
        key, value = item.split("=", 1)
        arguments[key] = parse_value(value)
    request = {"execute": cmd}
    if arguments:
        request["arguments"] = arguments
    return [request]


def via_socket(path, requests):
    deadline = time.time() + TIMEOUT
    while True:
        try:
            qmp = QMP(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.time() > deadline:
                fail("no QEMU listening on %s (is a rig run going on?)" % path)
            time.sleep(0.2)
    try:
        return [qmp.execute(r) for r in requests]
    finally:
        qmp.close()


def via_dir(directory, requests):
    name = "%d-%d" % (os.getpid(), int(time.time() * 1e6))
    req, rep = os.path.join(directory, name + ".req"), os.path.join(directory, name + ".rep")
    with open(req + ".tmp", "w") as f:
        json.dump(requests, f)
    os.rename(req + ".tmp", req)
    deadline = time.time() + TIMEOUT
    while not os.path.exists(rep):
        if time.time() > deadline:
            fail("no answer from the host relay in %ds (%s)" % (TIMEOUT, req))
        time.sleep(0.05)
    with open(rep) as f:
        replies = json.load(f)
    os.unlink(rep)
    return replies


def relay(path, directory, pid, log):
    os.makedirs(directory, exist_ok=True)
    while pid is None or os.path.exists("/proc/%d" % pid):
        for entry in sorted(os.listdir(directory)):
            if not entry.endswith(".req"):
                continue
            req = os.path.join(directory, entry)
            requests = None
            try:
                with open(req) as f:
                    requests = json.load(f)
                replies = via_socket(path, requests)
            except SystemExit:
                replies = [{"error": {"class": "RigRelay", "desc": "QMP socket unavailable"}}]
            except Exception as e:  # report anything to the guest rather than hang it
                replies = [{"error": {"class": "RigRelay", "desc": str(e)}}]
            if log:
                with open(log, "a") as f:
                    f.write(json.dumps({"requests": requests, "replies": replies}) + "\n")
            rep = req[:-4] + ".rep"
            with open(rep + ".tmp", "w") as f:
                json.dump(replies, f)
            os.rename(rep + ".tmp", rep)
            os.unlink(req)
        time.sleep(0.1)


def main(argv):
    sock_path, directory, pid, log = None, None, None, None
    while argv and argv[0].startswith("--"):
        opt = argv.pop(0)
        if not argv:
            fail("%s needs a value" % opt)
        if opt == "--socket":
            sock_path = argv.pop(0)
        elif opt == "--via":
            directory = argv.pop(0)
        elif opt == "--pid":
            pid = int(argv.pop(0))
        elif opt == "--log":
            log = argv.pop(0)
        else:
            fail("unknown option %s" % opt)
    if argv and argv[0] == "relay":
        if not sock_path or len(argv) < 2:
            fail("usage: qmp.py --socket PATH [--pid PID] [--log FILE] relay DIR")
        relay(sock_path, argv[1], pid, log)
        return 0
    requests = build_requests(argv)
    if directory:
        replies = via_dir(directory, requests)
    elif sock_path:
        replies = via_socket(sock_path, requests)
    else:
        fail("give --socket PATH (host) or --via DIR (guest)")
    status = 0
    for reply in replies:
        if "error" in reply:
            err = reply["error"]
            sys.stderr.write("rig qmp: %s: %s\n" % (err.get("class"), err.get("desc")))
            status = 1
        elif isinstance(reply["return"], str):
            sys.stdout.write(reply["return"])
        elif reply["return"] != {}:
            print(json.dumps(reply["return"], indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
