#!/usr/bin/env python3
"""Creation order and ext4's recently-deleted inodes (docs/benchmarks.md).

Creates 50 directories of 400 small files under DIR, deletes them, syncs,
and creates them again, three times, in one of two orders:
  interleaved  mkdir a directory, create its files, then the next directory
  dirs-first   every directory first, then the files
and prints how long each round took. On a journal-less ext4 the interleaved
order slows down round after round; dirs-first does not.

Usage: python3 testdata/ext4-create-order.py interleaved|dirs-first [DIR]
"""
import os
import shutil
import subprocess
import sys
import time

DIRS, FILES = 50, 400


def make_files(root, d):
    p = f'{root}/ldif/d{d:02d}'
    for i in range(FILES):
        fd = os.open(f'{p}/f{i:05d}.ldif', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b'x' * 1000)
        os.close(fd)


def create(root, order):
    start = time.time()
    if order == 'dirs-first':
        for d in range(DIRS):
            os.makedirs(f'{root}/ldif/d{d:02d}')
        for d in range(DIRS):
            make_files(root, d)
    else:
        for d in range(DIRS):
            os.makedirs(f'{root}/ldif/d{d:02d}')
            make_files(root, d)
    return time.time() - start


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ('interleaved', 'dirs-first'):
        sys.exit(__doc__)
    order = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) > 2 else '/tmp/ext4-create-order'
    for r in range(3):
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(['sync'], check=True)
        print(f'{order} round {r + 1}: {DIRS * FILES} files in {create(root, order):.2f} s', flush=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
