"""The error tree of syncer. Each error says what the caller does next.

    SyncerError                  base; str(error) is one line for a user, never the API key
    ├── ConfigError              bad configuration or usage            -> exit 2
    ├── StoreError               the database is missing, foreign or unusable -> exit 2
    │   └── DamagedError         SQLite found the file damaged (`status` calls it unhealthy:
    │                            exit 1)
    ├── LockedError              another process writes the mirror      -> exit 4
    ├── Interrupted              a stop request ended a request in flight: the run is
    │                            "interrupted", nothing failed
    └── ApiError                 the API answered something we cannot use
        ├── AuthError            401/403: the key is refused            -> exit 3, stop the run
        ├── NotFoundError        404: the resource is gone (a deleted conversation)
        ├── BadRequestError      400: e.g. a saved cursor the server rejects
        ├── RetryableError       429, 5xx, timeouts, dropped connections, bodies that are not JSON
        │   └── RetriesExhausted the retry budget is spent; the run ends with exit 1
        ├── UnreachableError     refused, unknown host or certificate before the server ever
        │                        answered: not retried; the run ends with exit 1
        └── ProtocolError        an answer that breaks the contract in a way retrying cannot fix
            │                    (a redirect, a cursor that repeats)
            └── TooLargeError    a body over [api].max_response_mb: not retried as asked (a
                                 messages page is asked again smaller, messages.py)
"""


class SyncerError(Exception):
    exit_code = 1


class ConfigError(SyncerError):
    exit_code = 2


class StoreError(SyncerError):
    exit_code = 2


class DamagedError(StoreError):
    pass


class LockedError(SyncerError):
    exit_code = 4


class Interrupted(SyncerError):
    pass


class ApiError(SyncerError):
    def __init__(self, message: str, *, path: str = "", status: int | None = None):
        super().__init__(message)
        self.path = path
        self.status = status


class AuthError(ApiError):
    exit_code = 3


class NotFoundError(ApiError):
    pass


class BadRequestError(ApiError):
    pass


class RetryableError(ApiError):
    def __init__(self, message: str, *, path: str = "", status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message, path=path, status=status)
        self.retry_after = retry_after


class RetriesExhausted(RetryableError):
    pass


class UnreachableError(ApiError):
    pass


class ProtocolError(ApiError):
    pass


class TooLargeError(ProtocolError):
    def __init__(self, message: str, *, path: str = "", size: int | None = None):
        super().__init__(message, path=path)
        self.size = size          # bytes the answer declared, None when it was cut off
