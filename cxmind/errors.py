"""The line between a user's mistake and a bug.

A :class:`UserError` is something the user can fix (a missing file, a mistyped recipe key, a model
id that cannot be resolved offline): the ``cxmind`` command prints its message as one line and exits
with status 2. Every other exception is a bug and keeps its traceback. ``UserError`` subclasses
``ValueError`` so that code calling the API and catching ``ValueError`` keeps working; the
subclasses below also keep the built-in type such code may catch (``FileNotFoundError``, ...).

:func:`require_model` checks, before anything is loaded or written, that a ``--model`` (or a
recipe's ``model``) names a model folder or a Hub id that can be resolved: cached when the Hub is
offline (``HF_HUB_OFFLINE=1``), else present on the Hub. :func:`hub_error` turns the Hub's
connection, offline and authentication errors into a :class:`UserError` naming the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ExistingOutputError",
    "MissingExtraError",
    "MissingFileError",
    "UserError",
    "hub_error",
    "hub_offline",
    "model_problem",
    "require_model",
]


class UserError(ValueError):
    """A mistake in the user's command, files or settings; the message names the fix."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (still a ``FileNotFoundError``)."""


class ExistingOutputError(UserError, FileExistsError):
    """An output the command would overwrite without being told to (still a ``FileExistsError``)."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` (still an ``ImportError``)."""


def hub_offline() -> bool:
    """Whether ``huggingface_hub`` refuses network access (``HF_HUB_OFFLINE=1`` when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _local_looking(name: str) -> bool:
    """Whether ``name`` can only mean a local path: Hub ids are ``name`` or ``namespace/name``."""
    path = Path(name).expanduser()
    return (
        path.is_absolute()
        or name.startswith((".", "~"))
        or name.endswith(("/", "\\"))
        or "\\" in name
        or name.count("/") > 1
        or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())  # the folder exists, the entry does not
    )


def _download_hint(name: str) -> str:
    return f"download it first with `hf download {name}` or pass a local folder"


def _cached(repo_id: str, markers: Sequence[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, marker), str) for marker in markers)


def model_problem(
    model: str,
    *,
    markers: Sequence[str] = ("config.json",),
    probe_hub: bool = False,
    offline: bool | None = None,
    timeout: float = 10.0,
) -> str | None:
    """Why ``model`` (a folder or Hub id) cannot be loaded, as words following its name; None if it can.

    A folder must hold one of ``markers``. A Hub id must be cached while the Hub is offline; online,
    an uncached id is looked up on the Hub only with ``probe_hub`` (one request of at most ``timeout``
    seconds), else assumed to download. ``offline`` overrides :func:`hub_offline`.
    """
    path = Path(model).expanduser()
    wanted = " or ".join(markers)
    if path.is_dir():
        if any((path / marker).is_file() for marker in markers):
            return None
        return f"is a folder without {wanted}, not a model; pass the folder that holds {markers[0]}"
    if path.exists():
        return f"is a file, not a model folder; pass the folder that holds {markers[0]}"
    if _local_looking(model):
        return f"is not a model folder (from {Path.cwd()}); fix the path or use a Hub id"
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return (
            f"is not a folder (from {Path.cwd()}) and not a valid Hub id (namespace/name); fix the path "
            "or the id"
        )
    if _cached(model, markers):
        return None
    if hub_offline() if offline is None else offline:
        return (
            "is not a folder and not in the Hugging Face cache while offline (HF_HUB_OFFLINE=1); "
            f"{_download_hint(model)}"
        )
    if not probe_hub:
        return None
    return _probe(model, markers, timeout)


def _probe(repo_id: str, markers: Sequence[str], timeout: float) -> str | None:
    """Ask the Hub whether ``repo_id`` holds one of ``markers`` (one HEAD request per marker)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    for marker in markers:
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, marker), timeout=timeout)
            return None
        except EntryNotFoundError:
            continue
        except GatedRepoError:
            return (
                f"is gated: accept its terms on https://huggingface.co/{repo_id} and log in "
                "(`hf auth login` or HF_TOKEN), or pass a local folder"
            )
        except RepositoryNotFoundError:
            return (
                "is not a folder and not a model on the Hugging Face Hub (a private one needs "
                "`hf auth login` or HF_TOKEN); fix the path or the id"
            )
        except Exception as err:
            problem = hub_error(err, "download it")
            if problem is None:
                raise
            return (
                f"is not a folder and not in the Hugging Face cache, and {problem}; {_download_hint(repo_id)}"
            )
    return f"holds no {' or '.join(markers)} on the Hub: not a model repo; fix the id"


def hub_error(err: BaseException, action: str) -> str | None:
    """Words saying why the Hub refused (``err``) and how to fix it, for ``action``; None if not the Hub's.

    Covers offline mode, connection failures and authentication or permission refusals. The words
    never include a token (only the status code and error type are named).
    """
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return f"HF_HUB_OFFLINE=1 is set: unset it to {action} (the Hub needs the network)"
    if isinstance(err, LocalTokenNotFoundError):
        return f"no Hugging Face token found: log in with `hf auth login` or set HF_TOKEN to {action}"
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return (
                f"the Hugging Face Hub refused the token ({status}): log in with `hf auth login` or set "
                f"HF_TOKEN to a token with write access to {action}"
            )
        if status is not None and status >= 500:
            return f"the Hugging Face Hub answered {status}: retry later to {action}"
        return None
    if _is_connection_error(err):
        return (
            f"the Hugging Face Hub cannot be reached ({type(err).__name__}): check the network or proxy "
            f"to {action}"
        )
    return None


def _is_connection_error(err: BaseException) -> bool:
    """A network failure of the Hub's HTTP client (whichever it is) or of the socket under it."""
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    names = {cls.__name__ for cls in type(err).__mro__}
    module = type(err).__module__.split(".")[0]
    transport = {"TransportError", "ConnectionError", "ConnectError", "Timeout", "TimeoutException"}
    return module in ("httpx", "httpx2", "requests", "urllib3", "httpcore") and bool(names & transport)


def require_model(
    model: str,
    *,
    flag: str = "--model",
    markers: Sequence[str] = ("config.json",),
    probe_hub: bool = True,
) -> None:
    """Raise :class:`UserError` ``"<flag> <model>: <problem and fix>"`` unless ``model`` can be loaded.

    See :func:`model_problem`; by default an uncached Hub id is looked up on the Hub, so an unreachable
    Hub or a mistyped id fails here, before anything is loaded or written.
    """
    problem = model_problem(model, markers=markers, probe_hub=probe_hub)
    if problem is not None:
        raise UserError(f"{flag} {model}: {problem}")
