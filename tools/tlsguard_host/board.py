"""A MicroPython board on a serial port (or pty, socket://, rfc2217://) through mpremote's
transport: raw-REPL exec, chunked uploads with progress, on-board SHA-256, free space, and the
transport's failures turned into errors that say what to check."""
import errno

from tlsguard_host.cli import CLIError


class Board:
    def __init__(self, port):
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
        self.port = port
        self._error = TransportError
        try:
            self.t = SerialTransport(port, baudrate=115200)
        except TransportError:
            raise CLIError("cannot open %s: no board there (check the cable, the port name, and that "
                           "no other program holds it)" % port)
        try:
            # No soft reset: a running main.py is interrupted with Ctrl-C instead, and nothing of the
            # board's state is lost before we have verified what we bring.
            self.t.enter_raw_repl(soft_reset=False)
        except (TransportError, OSError):
            self.close()
            raise CLIError("no MicroPython REPL answered on %s: wrong port, a board without MicroPython "
                           "firmware, or a program that does not stop on Ctrl-C" % port)

    def close(self):
        try:
            if getattr(self.t, "in_raw_repl", False):
                self.t.exit_raw_repl()
            self.t.close()
        except (OSError, AttributeError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def exec(self, code, what):
        try:
            return self.t.exec(code).decode("utf-8", "replace")
        except self._error as e:
            raise CLIError("%s failed on the board: %s" % (what, _last_line(e)))
        except OSError as e:
            raise CLIError("lost the board on %s during %s (%s)" % (self.port, what, e))

    def makedirs(self, path):
        self.exec("import os\np=''\nfor c in %r.split('/'):\n p=p+'/'+c if p else c\n try:\n  os.mkdir(p)\n"
                  " except OSError:\n  pass" % path, "creating %s" % path)

    def put(self, path, data, progress=None):
        try:
            self.t.fs_writefile(path, data, chunk_size=256, progress_callback=progress)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise CLIError("the board's filesystem is full (writing %s): free space or flash "
                               "fewer files; the installed files are unchanged" % path)
            raise CLIError("writing %s on the board failed: %s" % (path, e))
        except self._error as e:
            raise CLIError("writing %s on the board failed: %s" % (path, _last_line(e)))

    def sha256(self, path):
        try:
            return self.t.fs_hashfile(path, "sha256").hex()
        except (OSError, self._error) as e:
            raise CLIError("cannot hash %s on the board: %s" % (path, e))


def _last_line(e):
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__
