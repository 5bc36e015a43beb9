"""One ironic-python-agent writing a raw image to a lab disk, as the deploy benchmark's comparison. Runs with
the python of the benchmark's own environment (bench/ipa_env.py), never the project's: it imports nothing
of Neocloud.

    ~/.cache/neocloud/ipa-13.0.0/bin/python bench/ipa_stream.py URL DISK SHA256 SIZE

What it drives: ``StandbyExtension._stream_raw_image_onto_device(image_info, device)`` of
ironic_python_agent.extensions.standby (13.0.0), after ``config.populate_config()``: what IPA's
``prepare_image`` runs for a whole-disk ``raw`` image when Ironic's ``stream_raw_images`` is on (the default),
i.e. ``ImageDownload`` (requests, 1 MiB ``iter_content`` chunks, hashlib sha256 updated on every chunk),
``open(device, 'wb+')`` and a ``write`` per chunk, ``ImageDownload.verify_image`` (the sha256 against
``os_hash_value``), then ``disk_utils.fix_gpt_partition`` (``parted``; the image is an ext4 file system
without a partition table, so it changes nothing; where parted is missing IPA logs and goes on) and
``disk_utils.block_uuid``. Not driven: ``prepare_image``'s device discovery (hardware managers, lsblk),
partition-table validation and config drive, which are not the stream (our agent's config drive is not in
its stream window either).

What is patched, because the lab's disks are files, not block devices:
- ``open`` in the standby module, for the device path only: ``wb+`` on a block device neither truncates
  nor, at the last close, leaves data in memory (the kernel writes a block device's dirty pages when its
  last opener closes it). On a file ``wb+`` would truncate the preallocated disk to nothing and close
  would return with the image still in the page cache; so the device is opened ``r+b`` (same buffered
  writes, no truncation) and fsynced at close.
- ``disk_utils.block_uuid``: lsblk does not read regular files; ``blkid`` reads the same UUID from the
  file (what lsblk shows for a block device comes from the same probe, via udev).
Configured, not patched: ``image_download_connection_retries`` = 0, so a failed download or a checksum
mismatch fails the bench instead of being retried after 10 s.

Protocol with the bench: prints ``ready`` once imported and configured, waits for a line on stdin (so all
agents start together, imports not timed), streams, prints ``START END CPU ROOT_UUID FLUSH`` (time.time(); CPU: this process's
CPU seconds in between, all its threads; FLUSH: seconds spent in the device's close, writing out what the
buffered writes left in the page cache).
"""

import io
import os
import subprocess
import sys
import time

FLUSH_SECONDS = []  # how long each close of the device took to write what was left in the page cache


def block_device_open(device):
    """``open`` for the standby module, with a block device's semantics for ``device`` (module docstring)."""
    import builtins

    class BlockDeviceFile(io.BufferedRandom):
        def close(self):
            if not self.closed:
                started = time.monotonic()
                try:
                    self.flush()
                    os.fsync(self.fileno())
                finally:
                    FLUSH_SECONDS.append(time.monotonic() - started)
                    super().close()

    def patched_open(file, mode="r", *args, **kwargs):
        if file == device and mode == "wb+" and not args and not kwargs:
            raw = io.FileIO(device, "r+")
            return BlockDeviceFile(raw, buffer_size=os.fstat(raw.fileno()).st_blksize)
        return builtins.open(file, mode, *args, **kwargs)

    return patched_open


def blkid_uuid(dev):
    proc = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "UUID", dev], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip()


def main():
    url, device, sha256, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    from ironic_python_agent import config, disk_utils
    from ironic_python_agent.extensions import standby
    from oslo_config import cfg

    config.populate_config()
    cfg.CONF([], project="ironic-python-agent")
    cfg.CONF.set_override("image_download_connection_retries", 0)
    standby.open = block_device_open(device)
    disk_utils.block_uuid = blkid_uuid
    image_info = {
        "id": "bench",
        "urls": [url],
        "disk_format": "raw",
        "stream_raw_images": True,
        "os_hash_algo": "sha256",
        "os_hash_value": sha256,
    }
    extension = standby.StandbyExtension()
    extension.partition_uuids = {}  # as prepare_image sets it for a whole-disk image before streaming
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu = time.time(), time.process_time()
    extension._stream_raw_image_onto_device(image_info, device)
    ended, cpu = time.time(), time.process_time() - cpu
    written = os.path.getsize(device)
    if written < size:
        sys.exit(f"the disk {device} holds {written} bytes after the stream, less than the image's {size}")
    root_uuid = extension.partition_uuids.get("root uuid") or "-"
    print(started, ended, cpu, root_uuid, sum(FLUSH_SECONDS), flush=True)


if __name__ == "__main__":
    main()
