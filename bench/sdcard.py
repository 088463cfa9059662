"""An SD-card stand-in: an ext4 loop device whose writes are throttled to a few IOPS.

Why a loop device with blkio throttling: the state directory then sits on a real block device
with a real filesystem journal, so an fsync costs what it costs on a slow card (the data and
ext4's journal commit, each a write the throttle delays), while everything else (reads, the page
cache, other processes' disks) is untouched. The limit is set on the root blkio cgroup for that
one device only (cgroup v1 `blkio.throttle.write_iops_device`, or v2 `io.max` where the root
offers it), so it covers the kernel's writeback too. dm-delay would need device-mapper, which
this machine's kernel does not offer. 100 write IOPS is at the low end of what cheap microSD
cards sustain for small random writes (A1 cards promise 500); fsync latencies then spread from
under 1 ms (bursts the throttle lets through) to ~100 ms.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

V1 = Path("/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device")
V2 = Path("/sys/fs/cgroup/io.max")


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def available() -> str | None:
    """None when the stand-in can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (losetup, mount, blkio throttling)"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not V1.exists() and not V2.exists():
        return "no blkio/io cgroup throttling on this kernel"
    return None


def _throttle(device: str, iops: int) -> None:
    if V1.exists():
        V1.write_text(f"{device} {iops}\n")
    else:
        V2.write_text(f"{device} wiops={iops if iops else 'max'}\n")


@contextlib.contextmanager
def sd_card(workdir: Path, *, write_iops: int = 100, size_mb: int = 256) -> Iterator[Path]:
    """Mount a throttled ext4 loop device under workdir; yields the mount point."""
    why = available()
    if why is not None:
        raise RuntimeError(f"SD-card stand-in: {why}")
    image, mount = workdir / "sdcard.img", workdir / "sdcard"
    mount.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    loop = _run("losetup", "--find", "--show", str(image))
    device = Path(f"/sys/block/{Path(loop).name}/dev").read_text().strip()
    try:
        _run("mkfs.ext4", "-q", loop)
        _run("mount", loop, str(mount))
        try:
            _throttle(device, write_iops)
            try:
                yield mount
            finally:
                _throttle(device, 0)
        finally:
            for _ in range(10):
                try:
                    _run("umount", str(mount))
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.5)  # a process may still hold a file open
    finally:
        subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)
        image.unlink(missing_ok=True)
