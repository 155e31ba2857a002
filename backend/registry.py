"""The model registry: fine-tuned ONNX versions on disk, and which one is active.

    <root>/<version>/model.onnx   the weights
    <root>/<version>/card.json    metrics, data size, parent version, created time
    <root>/<version>/checkpoint_fp16.pt  fp16 weights to fine-tune from (trained versions)
    <root>/ACTIVE                 the active version's name (absent: the shipped model)
    <root>/history.json           {"stack": [previously active...], "log": [...events]}

Every file is replaced atomically (temp file in the same folder + os.replace), so a worker
reading ACTIVE sees the old or the new name, never half of one. Changes take an exclusive
lock on <root>/.lock, so two `squeezesam models promote` calls cannot interleave.
Workers poll `watch_token()` (one stat + one small read) and reload when it changes.
The `squeezesam models ...` commands are here too (`register(subparsers)`).

`model_version(settings)` names the version the workers serve, for the web process and
the CLI, which load no model themselves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squeezesam.models.predictor import DEFAULT_MODEL_PATH, WEIGHTS_DIR, Predictor

if TYPE_CHECKING:
    from squeezesam.backend.settings import Settings

ACTIVE = "ACTIVE"
HISTORY = "history.json"
MODEL = "model.onnx"
CARD = "card.json"
CHECKPOINT = "checkpoint_fp16.pt"  # the fp16 weights a fine-tuning run resumes from
BASE_CHECKPOINT = WEIGHTS_DIR / "squeezesam_fp16.pt"  # the shipped model's
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(RuntimeError):
    """A registry operation was refused or failed; the message says why."""


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path  # the model.onnx
    card: dict[str, Any]
    active: bool


def registry_root_from(settings: Settings | None = None) -> Path:
    """SQUEEZESAM_REGISTRY_DIR, else `<data dir>/registry`."""
    from squeezesam.backend.settings import Settings

    return (settings or Settings.from_env()).registry_path


class Registry:
    def __init__(
        self,
        root: str | os.PathLike[str],
        default_model: Path = DEFAULT_MODEL_PATH,
        default_checkpoint: Path = BASE_CHECKPOINT,
    ):
        self.root = Path(root)
        self.default_model = Path(default_model)
        self.default_checkpoint = Path(default_checkpoint)

    # --- reading (no lock: every file is replaced atomically) --------------------------

    def active(self) -> str | None:
        try:
            name = (self.root / ACTIVE).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):  # no registry (yet) at that path
            return None
        return name or None

    def active_path(self) -> Path:
        """The model file workers should load: the active version, else the shipped model."""
        version = self.active()
        return self.root / version / MODEL if version else self.default_model

    def checkpoint_path(self, version: str | None = None) -> Path | None:
        """fp16 weights of `version` (default: the active one) to fine-tune from.

        The shipped model's are models/weights/squeezesam_fp16.pt; a version registered
        without a checkpoint (`squeezesam models register` of a bare ONNX file) has none.
        """
        version = self.active() if version is None else version
        if not version:
            return self.default_checkpoint if self.default_checkpoint.is_file() else None
        path = self.root / _checked(version) / CHECKPOINT
        return path if path.is_file() else None

    def watch_token(self) -> str:
        """Changes whenever ACTIVE changes (content + mtime); cheap enough to poll."""
        path = self.root / ACTIVE
        try:
            stat = path.stat()
            return f"{path.read_text().strip()}@{stat.st_mtime_ns}"
        except FileNotFoundError:
            return "default"

    def list(self) -> list[ModelVersion]:
        """Every registered version, oldest first (by the card's created time)."""
        if not self.root.is_dir():
            return []
        active = self.active()
        out = []
        for folder in self.root.iterdir():
            if folder.is_dir() and _VERSION.match(folder.name) and (folder / CARD).is_file():
                out.append(ModelVersion(folder.name, folder / MODEL, self.card(folder.name),
                                        folder.name == active))  # fmt: skip
        return sorted(out, key=lambda m: (str(m.card.get("created", "")), m.version))

    def card(self, version: str) -> dict[str, Any]:
        try:
            return json.loads((self.root / _checked(version) / CARD).read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"version {version!r} has no readable {CARD}: {exc}") from exc

    def history(self) -> dict[str, list]:
        try:
            return json.loads((self.root / HISTORY).read_text())
        except FileNotFoundError:
            return {"stack": [], "log": []}

    # --- changing ------------------------------------------------------------------------

    def register(
        self,
        onnx_path: str | os.PathLike[str],
        version: str,
        card: dict[str, Any],
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Copy the ONNX file in as `version` with its card; returns the stored model path.

        The card is kept as given, plus `version` and `created` (UTC) when missing. Expected
        keys (by convention): metrics, data_size, parent_version. Refuses an existing version.
        """
        source = Path(onnx_path)
        if not source.is_file():
            raise RegistryError(f"cannot register {version!r}: {source} is not a file")
        with self._locked():
            folder = self.root / _checked(version)
            if folder.exists():
                raise RegistryError(f"version {version!r} already exists in {self.root}")
            tmp = self.root / f".{version}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                tmp.mkdir()
                shutil.copyfile(source, tmp / MODEL)
                if checkpoint is not None:  # kept for the next fine-tuning run to resume
                    shutil.copyfile(checkpoint, tmp / CHECKPOINT)
                full = {"version": version, "created": _now(), **card}
                (tmp / CARD).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, folder)  # the version appears complete or not at all
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise RegistryError(f"cannot register {version!r} in {self.root}: {exc}") from exc
        return folder / MODEL

    def validate(self, version: str) -> None:
        """Raise RegistryError unless the version's model loads in onnxruntime."""
        path = self.root / _checked(version) / MODEL
        if not path.is_file():
            raise RegistryError(f"version {version!r}: {path} is missing")
        import onnxruntime as ort  # only on promotion: the registry is imported by the CLI

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: exported graphs warn about initializers
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise RegistryError(f"version {version!r}: {path} does not load: {exc}") from exc
        if not session.get_inputs() or not session.get_outputs():
            raise RegistryError(f"version {version!r}: {path} has no inputs or outputs")

    def promote(self, version: str) -> None:
        """Make `version` active (after validating it); the old one can be rolled back to."""
        self.validate(version)
        with self._locked():
            current = self.active()
            if current == version:
                return
            history = self.history()
            history["stack"].append(current)  # None: the shipped default model
            history["log"].append({"at": _now(), "action": "promote", "version": version,
                                   "previous": current})  # fmt: skip
            self._write_history(history)
            self._write_active(version)

    def rollback(self) -> str | None:
        """Back to the previously active version; returns it (None: the shipped model)."""
        with self._locked():
            history = self.history()
            if not history["stack"]:
                raise RegistryError("nothing to roll back to: no earlier promotion recorded")
            current, target = self.active(), history["stack"].pop()
            if target is not None and not (self.root / target / MODEL).is_file():
                raise RegistryError(f"cannot roll back to {target!r}: its model file is gone")
            history["log"].append({"at": _now(), "action": "rollback", "version": target,
                                   "previous": current})  # fmt: skip
            self._write_history(history)
            self._write_active(target)
            return target

    # --- internals -------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / ".lock", "a")  # held for the whole block
        except OSError as exc:
            raise RegistryError(f"cannot use the model registry {self.root}: {exc}") from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write_active(self, version: str | None) -> None:
        if version is None:
            try:
                os.unlink(self.root / ACTIVE)
            except FileNotFoundError:
                pass
            return
        _atomic_write(self.root / ACTIVE, version + "\n")

    def _write_history(self, history: dict[str, list]) -> None:
        _atomic_write(self.root / HISTORY, json.dumps(history, indent=2) + "\n")


# --- the served version ----------------------------------------------------------------


def model_registry(settings: Settings) -> Registry:
    """The registry the service uses (SQUEEZESAM_REGISTRY_DIR, the configured model)."""
    return Registry(settings.registry_path, default_model=settings.model_file)


_versions: dict[tuple[str, float], str] = {}


def model_version(settings: Settings) -> str:
    """The version the workers serve (the registry's active model), from the model file's
    metadata (cached).

    The web process needs it for `/setup` and `/versions` without running jobs; reading it
    costs one onnxruntime session load per model file change.
    """
    return model_version_of(model_registry(settings).active_path())


def model_version_of(path: Path) -> str:
    key = (str(path), path.stat().st_mtime if path.is_file() else -1.0)
    if key not in _versions:
        _versions[key] = Predictor(path, threads=1).version
    return _versions[key]


# --- `squeezesam models ...` (registered through backend.cli.COMMAND_MODULES) ------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `models` commands: list | promote VERSION | rollback | register ONNX VERSION."""
    models = subparsers.add_parser("models", help="the model registry (fine-tuned versions)")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    msub.add_parser("list", help="registered versions; * marks the active one").set_defaults(
        func=cmd_models_list
    )
    promote = msub.add_parser("promote", help="validate VERSION and make it active")
    promote.add_argument("version")
    promote.set_defaults(func=cmd_models_promote)
    msub.add_parser("rollback", help="back to the previously active version").set_defaults(
        func=cmd_models_rollback
    )
    reg = msub.add_parser("register", help="copy an ONNX file in as VERSION")
    reg.add_argument("onnx", type=Path)
    reg.add_argument("version")
    reg.add_argument("--card", type=Path, help="JSON file: metrics, data_size, parent_version")
    reg.set_defaults(func=cmd_models_register)


def _cli_registry() -> Registry:
    from squeezesam.backend.settings import Settings

    return model_registry(Settings.from_env())


def _cli_fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def cmd_models_list(args: argparse.Namespace) -> int:
    registry = _cli_registry()
    versions = registry.list()
    if registry.active() is None:  # the shipped model is served: name it like the others
        try:
            shipped = model_version_of(registry.default_model)
        except Exception as exc:  # a missing or unreadable model file: say so, not a trace
            shipped = f"(unreadable: {type(exc).__name__})"
        print(f"* {shipped}  shipped  {registry.default_model}")
    if not versions:
        print(f"(no fine-tuned versions registered in {registry.root})")
    for m in versions:
        metrics = json.dumps(m.card.get("metrics", {}), sort_keys=True)
        print(f"{'*' if m.active else ' '} {m.version}  {m.card.get('created', '')}  {metrics}")
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    try:
        _cli_registry().promote(args.version)
    except RegistryError as exc:
        return _cli_fail(exc)
    print(f"active: {args.version}")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    registry = _cli_registry()
    try:
        version = registry.rollback()
    except RegistryError as exc:
        return _cli_fail(exc)
    print(f"active: {version or 'the shipped model'} ({registry.active_path()})")
    return 0


def cmd_models_register(args: argparse.Namespace) -> int:
    try:
        card = json.loads(args.card.read_text()) if args.card else {}
        path = _cli_registry().register(args.onnx, args.version, card)
    except (RegistryError, OSError, ValueError) as exc:
        return _cli_fail(exc)
    print(f"registered {args.version}: {path}")
    return 0


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RegistryError(f"cannot write {path}: {exc}") from exc


def _checked(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise RegistryError(
            f"bad version name {version!r}: use letters, digits, '.', '_' or '-' (max 128)"
        )
    return version


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
