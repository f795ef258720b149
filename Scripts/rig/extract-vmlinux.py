#!/usr/bin/env python3
"""Limitless rig: extract the uncompressed kernel (vmlinux) from a bzImage for PVH boot.

  extract-vmlinux.py VMLINUZ OUT

QEMU boots an ELF vmlinux that carries a PVH entry note (CONFIG_PVH) directly, skipping the
firmware's real-mode loader and the kernel's own decompression, both slow under TCG (the guest
reaches /init in about half the time). Exit 1, writing nothing, when the image holds no
compressed ELF kernel with a PVH note; the rig then boots the bzImage.
"""
import bz2
import lzma
import os
import struct
import sys
import zlib

XEN_ELFNOTE_PHYS32_ENTRY = 18


def candidates(data):
    """Yield (offset, decompress) for every compressed stream signature in the image."""
    sigs = [
        (b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor().decompress(b)),
        (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b)),
        (b"BZh", lambda b: bz2.BZ2Decompressor().decompress(b)),
        (b"\x5d\x00\x00", lambda b: lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(b)),
    ]
    for magic, fn in sigs:
        start = 0
        while True:
            i = data.find(magic, start)
            if i < 0:
                break
            yield i, fn
            start = i + 1


def has_pvh_note(elf):
    if elf[:4] != b"\x7fELF" or elf[4] != 2:  # 64-bit ELF only
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for n in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + n * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        off, end = p_offset, p_offset + p_filesz
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, off)
            name = elf[off + 12:off + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            off += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def main(src, dst):
    data = open(src, "rb").read()
    for offset, fn in candidates(data):
        try:
            elf = fn(data[offset:])
        except Exception:
            continue
        if len(elf) > 1 << 20 and has_pvh_note(elf):
            with open(dst + ".tmp", "wb") as f:
                f.write(elf)
            os.rename(dst + ".tmp", dst)
            return 0
    sys.stderr.write("extract-vmlinux: no compressed ELF kernel with a PVH note in %s\n" % src)
    return 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
