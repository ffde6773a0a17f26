"""`tlsguard image`: a littlefs2 image of lib/ + a device's credentials (committed by the device's
own CredentialStore code, run under the unix port on the image), verified on the host, optionally
merged with a MicroPython firmware .bin so a factory writes each board with one esptool command."""
import datetime
import os
import tempfile

from tlsguard_host import lfsimage, provision
from tlsguard_host.certfile import write_private
from tlsguard_host.cli import CLIError
from tlsguard_host.cmd_flash import _RMTREE

# ESP32 firmware from micropython.org starts with the bootloader at 0x1000; S3/C3/C6 at 0x0.
FIRMWARE_OFFSET = 0x1000


def _int(text):
    try:
        return int(text, 0)
    except ValueError:
        raise CLIError("%r is not a number (use 0x200000 or 2097152)" % text)


def build_filesystem(payload, blocks, workdir):
    """Image bytes holding payload's files with its credentials committed into the store."""
    staged = dict(payload.files)
    staged.update({provision.STAGE + "/" + n: d for n, d in payload.creds.items()})
    path = os.path.join(workdir, "fs.img")
    with open(path, "wb") as f:
        f.write(lfsimage.build(staged, blocks))
    if payload.creds:
        code = provision.commit_code(datetime.datetime.now(datetime.timezone.utc))
        out = lfsimage.run_on_image(path, code + _RMTREE + "_rm(%r)\n" % provision.STAGE)
        provision.commit_result(out)
    with open(path, "rb") as f:
        return f.read()


def verify(image, payload):
    """Read the image back as a board would mount it and check every file and the store."""
    files = lfsimage.read(image)
    for path, data in payload.files.items():
        if files.get(path) != data:
            raise CLIError("image check failed: %s is missing or differs" % path)
    if any(p.startswith(provision.STAGE) for p in files):
        raise CLIError("image check failed: staging files left behind")
    if payload.creds and "%s/manifest.json" % provision.STORE not in files:
        raise CLIError("image check failed: no credential store manifest")
    return files


def run(args):
    offset, size = lfsimage.LAYOUTS[args.layout]
    offset = _int(args.offset) if args.offset else offset
    size = _int(args.size) if args.size else size
    if size % lfsimage.BLOCK or offset % lfsimage.BLOCK:
        raise CLIError("--offset and --size must be multiples of %d" % lfsimage.BLOCK)
    if args.firmware and not os.path.isfile(args.firmware):
        raise CLIError("firmware not found: %s" % args.firmware)
    payload = provision.collect(args)
    with tempfile.TemporaryDirectory() as work:
        image = build_filesystem(payload, size // lfsimage.BLOCK, work)
        files = verify(image, payload)
        if args.firmware:
            fw_offset = _int(args.firmware_offset)
            if fw_offset + os.path.getsize(args.firmware) > offset:
                raise CLIError("the firmware (%d bytes at 0x%x) overlaps the filesystem at 0x%x: choose "
                               "another --layout" % (os.path.getsize(args.firmware), fw_offset, offset))
            fs_path = os.path.join(work, "fs.img")
            merged = os.path.join(work, "merged.bin")
            from tlsguard_host.esp import merge_bin
            merge_bin(merged, args.chip, "keep", [(fw_offset, args.firmware), (offset, fs_path)])
            with open(merged, "rb") as f:
                data = f.read()
            if data[offset:offset + len(image)] != image:
                raise CLIError("merge-bin output does not hold the filesystem at 0x%x" % offset)
            where = "0x0"
        else:
            data = image
            where = "0x%x" % offset
    # The image carries the device's private key: owner-only, like the key file itself.
    write_private(args.out, data)
    print("wrote %s (%d bytes, %d files, filesystem %d KiB at 0x%x)" % (
        args.out, len(data), len(files), size // 1024, offset))
    print("flash it with: esptool --chip %s --port PORT write-flash %s %s" % (args.chip, where, args.out))
    return 0


def register(sub):
    p = sub.add_parser("image", help="littlefs2 image of lib/ + credentials, optionally merged with firmware")
    p.add_argument("--out", required=True, help="output file (mode 0600: it holds the device key)")
    p.add_argument("--firmware", help="MicroPython firmware .bin to merge with (esptool merge-bin)")
    p.add_argument("--firmware-offset", default="0x%x" % FIRMWARE_OFFSET,
                   help="where the firmware .bin goes (0x1000 on ESP32, 0x0 on S3/C3)")
    p.add_argument("--chip", default="esp32", help="esptool chip name (default esp32)")
    p.add_argument("--layout", choices=sorted(lfsimage.LAYOUTS), default="generic-4mb",
                   help="flash layout for the vfs partition (default generic-4mb: 0x200000, 2 MiB)")
    p.add_argument("--offset", help="filesystem offset, overrides --layout")
    p.add_argument("--size", help="filesystem size in bytes, overrides --layout")
    provision.add_arguments(p)
    p.set_defaults(func=run)
