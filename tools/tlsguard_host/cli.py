"""`tlsguard` command line, shaped like mpremote's: `tlsguard COMMAND [options]`.
Each command lives in its own module exposing `register(subparsers)`; this file only wires them."""
import argparse
import importlib
import sys

# Command modules in the order `tlsguard --help` lists them.
COMMANDS = ("bundle", "pin", "ca", "doctor", "flash", "image", "package", "mpy")


def build_parser():
    parser = argparse.ArgumentParser(prog="tlsguard", description="tlsguard host tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module("tlsguard_host.cmd_" + name)
        except ModuleNotFoundError as e:
            if e.name != "tlsguard_host.cmd_" + name:
                raise
            continue
        mod.register(sub)
    return parser


class CLIError(Exception):
    """A user-facing error: printed as 'tlsguard: error: ...', exit status 2."""


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except CLIError as e:
        print("tlsguard: error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stdout = None
        return 0


if __name__ == "__main__":
    sys.exit(main())
