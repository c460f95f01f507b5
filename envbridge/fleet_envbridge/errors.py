"""The one error the bridge raises for requests it cannot serve."""


class InvalidRequest(Exception):
    """The client asked for something the bridge cannot do: an unknown env id,
    an unsupported space, a request out of order or a malformed action. The
    server answers it with gRPC status INVALID_ARGUMENT and this message."""
