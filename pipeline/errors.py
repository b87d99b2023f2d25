"""User-facing errors: one line that says what and where, never a traceback."""


class DatakilnError(Exception):
    """A problem with the user's spec or data; the CLI prints it as one line and exits 2."""


class SpecError(DatakilnError):
    """The spec is invalid: a bad key path, value or type."""


class SourceError(DatakilnError):
    """A source cannot be read: missing file, wrong format, inconsistent inputs."""


class GateError(DatakilnError):
    """The run finished but a quality limit (reject fraction, metric gate) failed."""


def find_user_error(exc: BaseException) -> DatakilnError | None:
    """Find a DatakilnError behind Ray's wrappers (RayTaskError, UserCodeException, ...)."""
    seen = set()
    stack = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, DatakilnError):
            cause = getattr(err, "cause", None)  # Ray's RayTaskError(SourceError) prints a traceback
            return cause if isinstance(cause, DatakilnError) else err
        stack.extend([getattr(err, "cause", None), err.__cause__, err.__context__])
    return None
