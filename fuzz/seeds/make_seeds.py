#!/usr/bin/env python3
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Writes seed inputs for the `decode` and `channel` fuzz targets into seeds/decode/ and
seeds/channel/.

decode: each file is one selector byte followed by one well-formed backend-channel message:
  selector: bit 0 = dialect (0 Standard, 1 Legacy), bits 1..2 = number of fds (0..3)
channel: each file is a config byte followed by chunks, each sent with one sendmsg:
  config:   bit 0 = dialect (0 Standard, 1 Legacy), bit 1 = replace_exact, bit 2 = no window,
            bit 3 = no IO space
  chunk:    u8 spec, u16 length (little endian, spec bit 5; u8 without it), then the data
            (`length` bytes; with spec bit 6 one byte repeated `length` times)
  spec:     bits 0..2 = number of fds sent with the chunk (0..7), bits 3..4 = memfd size class
            (0, 4 KiB, 64 KiB, 2 MiB), bit 7 = eventfds (not mappable) instead of memfds
Messages (both):
  header:   u32 request, u32 flags (VERSION 1 | NEED_REPLY 8), u32 body size, little endian
  Standard SHMEM_MAP/SHMEM_UNMAP body: VhostUserMMap, 40 bytes packed
            {u8 shmid; u8 pad[7]; u64 fd_offset; u64 shm_offset; u64 len; u64 flags}
  Legacy FS_* body: VhostUserFSBackendMsg, 256 bytes
            {u64 fd_offset[8]; u64 cache_offset[8]; u64 len[8]; u64 flags[8]}
  MEM_READ/MEM_WRITE body: {u64 guest_address; u32 size} then the data (MEM_WRITE).

Run from anywhere: python3 fuzz/seeds/make_seeds.py
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

VERSION = 0x1
NEED_REPLY = 0x8
PAGE = 4096
MIB = 1 << 20

# Standard dialect request codes.
SHMEM_MAP, SHMEM_UNMAP, MEM_READ, MEM_WRITE = 9, 10, 11, 12
# Legacy dialect request codes.
FS_MAP, FS_UNMAP, FS_SYNC, FS_IO = 6, 7, 8, 9
# Flags.
MMAP_FLAG_WRITABLE = 0x1
FS_FLAG_MAP_R, FS_FLAG_MAP_W = 0x1, 0x2

STANDARD, LEGACY = 0, 1
U64_MAX = (1 << 64) - 1


def selector(dialect, nfds):
    assert nfds in range(4)
    return bytes([dialect | (nfds << 1)])


def header(request, size, need_reply=True):
    flags = VERSION | (NEED_REPLY if need_reply else 0)
    return struct.pack("<III", request, flags, size)


def mmap_body(shmid, fd_offset, shm_offset, length, flags):
    body = struct.pack("<B7xQQQQ", shmid, fd_offset, shm_offset, length, flags)
    assert len(body) == 40
    return body


def fs_body(entries):
    """entries: up to 8 tuples (fd_offset, cache_offset, len, flags); the rest stay zero."""
    assert len(entries) <= 8
    cols = [[0] * 8 for _ in range(4)]
    for i, entry in enumerate(entries):
        for c in range(4):
            cols[c][i] = entry[c]
    body = b"".join(struct.pack("<8Q", *col) for col in cols)
    assert len(body) == 256
    return body


def message(dialect, nfds, request, body, need_reply=True):
    return selector(dialect, nfds) + header(request, len(body), need_reply) + body


SEEDS = {
    # Standard dialect.
    "shmem_map_rw": message(
        STANDARD, 1, SHMEM_MAP, mmap_body(0, 0, 2 * MIB, 2 * MIB, MMAP_FLAG_WRITABLE)
    ),
    "shmem_map_ro_no_reply": message(
        STANDARD, 1, SHMEM_MAP, mmap_body(0, 16 * PAGE, 0, PAGE, 0), need_reply=False
    ),
    "shmem_unmap": message(STANDARD, 0, SHMEM_UNMAP, mmap_body(0, 0, 2 * MIB, 2 * MIB, 0)),
    "mem_read": message(STANDARD, 0, MEM_READ, struct.pack("<QI", 0x1000, 64)),
    "mem_write": message(
        STANDARD, 0, MEM_WRITE, struct.pack("<QI", 0x2000, 16) + bytes(range(16))
    ),
    # Legacy dialect.
    "fs_map_one": message(
        LEGACY, 1, FS_MAP, fs_body([(0, 0, 2 * MIB, FS_FLAG_MAP_R | FS_FLAG_MAP_W)])
    ),
    "fs_map_eight": message(
        LEGACY,
        1,
        FS_MAP,
        fs_body(
            [
                (i * PAGE, i * 2 * PAGE, PAGE, FS_FLAG_MAP_R | (FS_FLAG_MAP_W if i % 2 else 0))
                for i in range(8)
            ]
        ),
    ),
    "fs_unmap": message(LEGACY, 0, FS_UNMAP, fs_body([(0, 0, 2 * MIB, 0), (0, 4 * MIB, PAGE, 0)])),
    "fs_unmap_all": message(LEGACY, 0, FS_UNMAP, fs_body([(0, 0, U64_MAX, 0)])),
    "fs_sync": message(LEGACY, 0, FS_SYNC, fs_body([(0, 0, 2 * MIB, 0)])),
    "fs_io_read_write": message(
        LEGACY,
        1,
        FS_IO,
        fs_body([(0, 0x10000, PAGE, FS_FLAG_MAP_R), (PAGE, 0x20000, 512, FS_FLAG_MAP_W)]),
    ),
}


# channel target.

MEMFD_0, MEMFD_4K, MEMFD_64K, MEMFD_2M = range(4)
RAM_GPA, WINDOW_GPA = 0x1000, 1 << 30


def wire(request, body, need_reply=True):
    """One message as the channel receives it (header and body, no selector)."""
    return header(request, len(body), need_reply) + body


def chunk(data, nfds=0, size=MEMFD_2M, eventfd=False):
    assert nfds in range(8) and size in range(4) and len(data) < 1 << 16
    spec = nfds | size << 3 | 0x20 | (0x80 if eventfd else 0)
    return bytes([spec]) + struct.pack("<H", len(data)) + data


def fill(length, byte=0):
    """`length` copies of `byte`, from four input bytes."""
    assert length < 1 << 16
    return bytes([0x20 | 0x40]) + struct.pack("<HB", length, byte)


def stream(config, *chunks):
    return bytes([config]) + b"".join(chunks)


RW = FS_FLAG_MAP_R | FS_FLAG_MAP_W
CHANNEL_SEEDS = {
    "shmem_map": stream(
        STANDARD,
        chunk(wire(SHMEM_MAP, mmap_body(0, 0, 2 * MIB, 2 * MIB, MMAP_FLAG_WRITABLE)), 1),
    ),
    "shmem_map_unmap": stream(
        STANDARD,
        chunk(wire(SHMEM_MAP, mmap_body(0, PAGE, 16 * PAGE, 4 * PAGE, 0)), 1, MEMFD_64K),
        chunk(wire(SHMEM_UNMAP, mmap_body(0, 0, 16 * PAGE, 4 * PAGE, 0))),
    ),
    "shmem_unmap": stream(STANDARD, chunk(wire(SHMEM_UNMAP, mmap_body(0, 0, 0, 2 * MIB, 0)))),
    "shmem_map_split_fds": stream(
        STANDARD,
        chunk(header(SHMEM_MAP, 40), 1, MEMFD_4K),
        chunk(mmap_body(0, 0, 0, PAGE, 0), 1, MEMFD_4K),
    ),
    "mem_write_read": stream(
        STANDARD,
        chunk(wire(MEM_WRITE, struct.pack("<QI", RAM_GPA, 16) + bytes(range(16)))),
        chunk(wire(MEM_READ, struct.pack("<QI", RAM_GPA, 16), need_reply=False)),
    ),
    "fs_map": stream(
        LEGACY,
        chunk(wire(FS_MAP, fs_body([(0, 0, 2 * MIB, RW), (0, 2 * MIB, PAGE, FS_FLAG_MAP_R)])), 1),
    ),
    "fs_map_sync_unmap": stream(
        LEGACY,
        chunk(
            wire(FS_MAP, fs_body([(0, 0, 4 * PAGE, RW), (4 * PAGE, 8 * PAGE, 4 * PAGE, RW)])),
            1,
            MEMFD_64K,
        ),
        chunk(wire(FS_SYNC, fs_body([(0, 0, 16 * PAGE, 0)]))),
        chunk(wire(FS_UNMAP, fs_body([(0, PAGE, 2 * PAGE, 0)]))),
        chunk(wire(FS_UNMAP, fs_body([(0, 0, U64_MAX, 0)]))),
    ),
    "fs_map_eventfd": stream(
        LEGACY, chunk(wire(FS_MAP, fs_body([(0, 0, PAGE, RW)])), 1, eventfd=True)
    ),
    "fs_unmap": stream(LEGACY, chunk(wire(FS_UNMAP, fs_body([(0, 0, 2 * MIB, 0)])))),
    "fs_sync": stream(LEGACY, chunk(wire(FS_SYNC, fs_body([(0, 0, 2 * MIB, 0)])))),
    "fs_io": stream(
        LEGACY,
        chunk(wire(FS_MAP, fs_body([(0, 0, 4 * PAGE, RW)])), 1, MEMFD_64K),
        chunk(
            wire(
                FS_IO,
                fs_body(
                    [(0, RAM_GPA, PAGE, FS_FLAG_MAP_R), (PAGE, WINDOW_GPA, 512, FS_FLAG_MAP_W)]
                ),
            ),
            1,
            MEMFD_64K,
        ),
    ),
    "truncated_header": stream(STANDARD, chunk(header(SHMEM_MAP, 40)[:7])),
    "oversized_body": stream(
        STANDARD,
        chunk(header(SHMEM_MAP, 8192), 1),
        fill(8192, 0xa5),
        chunk(wire(SHMEM_UNMAP, mmap_body(0, 0, 0, PAGE, 0))),
    ),
}


def write(target, seeds):
    out = os.path.join(HERE, target)
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {out}")


def main():
    write("decode", SEEDS)
    write("channel", CHANNEL_SEEDS)


if __name__ == "__main__":
    main()
