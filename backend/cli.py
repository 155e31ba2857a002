"""The `squeezesam` command.

Subcommands are registered by modules, each with a `register(subparsers)` function that
adds its parsers and sets `func` (called with the parsed args). Add a module to
COMMAND_MODULES to add commands; there is no central if-chain.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "squeezesam.backend.serve",  # serve, web, worker
    "squeezesam.models.cli_commands",  # eval, train-base, export
    "squeezesam.backend.preannotate_cli",  # preannotate --project ID
    "squeezesam.backend.registry",  # models list|promote|rollback|register
    "squeezesam.backend.store.cli",  # labels export|stats|reconcile
    "squeezesam.backend.training_cli",  # train, train-scheduler
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="squeezesam", description="SqueezeSAM for Label Studio: ML backend and model tools"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        # imported here, not at the top: `squeezesam --help` stays fast and a module's
        # heavy imports happen inside its commands
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        raise SystemExit(2)
    logging.basicConfig(
        level=getattr(args, "log_level", None) or "INFO",
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    try:
        result = args.func(args)
    except Exception as exc:
        message = _one_line(exc)
        if message is None:
            raise
        print(f"squeezesam {args.command}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(result or 0)


def _one_line(exc: Exception) -> str | None:
    """The one-line message of a misconfiguration (a bad or missing setting, a Redis or
    Label Studio that is not there); None for anything else (a bug: its traceback)."""
    import redis

    from squeezesam.backend.ls_client import LabelStudioUnavailable
    from squeezesam.backend.settings import ConfigError

    if isinstance(exc, ConfigError | LabelStudioUnavailable):
        return str(exc)
    if isinstance(exc, redis.ConnectionError):
        return f"cannot reach Redis (REDIS_URL): {exc}"
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
