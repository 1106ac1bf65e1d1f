#!/usr/bin/env python3
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Writes seed inputs for the `decode` fuzz target into seeds/decode/.

Each file is one selector byte followed by one well-formed backend-channel message:
  selector: bit 0 = dialect (0 Standard, 1 Legacy), bits 1..2 = number of fds (0..3)
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

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode")

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


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {OUT}")


if __name__ == "__main__":
    main()
