"""User-facing errors: one line that says what and where, never a traceback."""

import re


class DatakilnError(Exception):
    """A problem with the user's spec or data; the CLI prints it as one line and exits 2."""


class SpecError(DatakilnError):
    """The spec is invalid: a bad key path, value or type."""


class SourceError(DatakilnError):
    """A source cannot be read: missing file, wrong format, inconsistent inputs."""


class GateError(DatakilnError):
    """The run finished but a quality limit (reject fraction, metric gate) failed."""


_REMOTE_ERROR = re.compile(r"^pipeline\.errors\.(\w+): (.+)$", re.MULTILINE)


def find_user_error(exc: BaseException) -> DatakilnError | None:
    """Find a DatakilnError behind Ray's wrappers (RayTaskError, UserCodeException, ...).

    When Ray Data's iterator wraps a task's error in a UserCodeException, only the remote
    traceback's text still holds it: its last `pipeline.errors.X: message` line is the error."""
    seen = set()
    stack = [exc]
    texts = []
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, DatakilnError):
            cause = getattr(err, "cause", None)  # Ray's RayTaskError(SourceError) prints a traceback
            return cause if isinstance(cause, DatakilnError) else err
        texts.append(str(err))
        stack.extend([getattr(err, "cause", None), err.__cause__, err.__context__])
    for text in texts:
        found = _REMOTE_ERROR.findall(text)
        kinds = {cls.__name__: cls for cls in (DatakilnError, SpecError, SourceError, GateError)}
        if found and found[-1][0] in kinds:
            return kinds[found[-1][0]](found[-1][1])
    return None
