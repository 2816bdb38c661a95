"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class PumaError(Exception):
    """An expected failure (bad input, bad config, missing file): message says what to do."""


class ConfigError(PumaError):
    """A configuration key, value or file is invalid; the message names the key."""


def worker_error_line(exc: BaseException) -> str | None:
    """A failure raised inside a Ray worker (task, actor or its constructor), as its own last error line,
    `Type: message`; None when `exc` did not come from a Ray worker. Ray wraps the worker's exception in its
    own (RayTaskError, ActorDiedError, Ray Data's UserCodeException) whose text ends with the original's."""
    import re

    chain, seen = [], exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if not any(type(e).__module__.split(".")[0] == "ray" for e in chain):
        return None
    for e in chain:
        lines = [m.groups() for m in re.finditer(r"^(?:[\w]+\.)*(\w+(?:Error|Exception)): (.+)$", str(e), re.M)]
        if lines:
            name, message = lines[-1]
            return f"{name}: {message.strip()}"
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}"
