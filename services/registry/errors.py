"""Refusals of the registry API, each with Confluent's HTTP status and `error_code`.

Clients (confluent-kafka, kcat, Java) branch on these codes, so they follow Confluent's numbering.
"""

from __future__ import annotations

from schemas.errors import RegistryError


class RegistryRequestError(RegistryError):
    """A request the registry refuses; rendered as `{"error_code": ..., "message": ...}`."""

    def __init__(self, status: int, error_code: int, message: str):
        self.status = status
        self.error_code = error_code
        self.message = message
        super().__init__(message)


def subject_not_found(subject: str) -> RegistryRequestError:
    return RegistryRequestError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: object) -> RegistryRequestError:
    return RegistryRequestError(404, 40402, f"Version {version} not found for subject '{subject}'.")


def schema_not_found(detail: str = "Schema not found") -> RegistryRequestError:
    return RegistryRequestError(404, 40403, detail)


def subject_soft_deleted(subject: str) -> RegistryRequestError:
    return RegistryRequestError(
        404, 40404, f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
    )


def subject_not_soft_deleted(subject: str) -> RegistryRequestError:
    return RegistryRequestError(
        404, 40405, f"Subject '{subject}' was not deleted first before being permanently deleted; "
        "delete it without permanent=true first"
    )


def version_soft_deleted(subject: str, version: int) -> RegistryRequestError:
    return RegistryRequestError(
        404, 40406, f"Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"
    )


def version_not_soft_deleted(subject: str, version: int) -> RegistryRequestError:
    return RegistryRequestError(
        404, 40407, f"Subject '{subject}' Version {version} was not deleted first before being permanently "
        "deleted; delete it without permanent=true first"
    )


def invalid_schema(message: str) -> RegistryRequestError:
    return RegistryRequestError(422, 42201, message)


def invalid_version(version: object) -> RegistryRequestError:
    return RegistryRequestError(
        422, 42202, f"The specified version '{version}' is not a valid version id. "
        "Allowed values are between [1, 2^31-1] and the string \"latest\""
    )


def invalid_compatibility_level(message: str) -> RegistryRequestError:
    return RegistryRequestError(422, 42203, message)
