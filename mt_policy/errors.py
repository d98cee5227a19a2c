"""Exception types shared by every stage, so the CLI can turn them into one clear line and exit 2."""


class MtPolicyError(Exception):
    """Base class for errors the user can fix (bad input, bad config, corrupt data)."""


class SchemaError(MtPolicyError):
    """An observation/action does not match the declared schema, or a schema is malformed."""


class StoreError(MtPolicyError):
    """A demo store cannot be opened or read: missing, not a store, corrupt, or inconsistent."""


class UnknownNameError(MtPolicyError, KeyError):
    """A name (task, suite, camera, ...) is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, known: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the error for an unknown `name` of `kind`, listing every known name."""
    listing = ", ".join(sorted(known)) or "(none registered)"
    return UnknownNameError(f"unknown {kind} {name!r}; known {kind}s: {listing}")
