"""Request and response schemas of the User aggregate."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Self, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.core.scopes import Role
from app.core.text import canonical_identity, unsafe_characters

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128
_USERNAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_PHONE_PATTERN = r"^\+?[0-9 ()-]{5,20}$"

T = TypeVar("T")


def check_password_strength(password: str) -> str:
    """Enforce seed 001's rules: upper, lower and a digit (length is a constraint).

    Args:
        password: The candidate password.

    Returns:
        The password, unchanged.

    Raises:
        ValueError: Naming every rule the password breaks.
    """
    problems = []
    if not re.search(r"[A-Z]", password):
        problems.append("an uppercase letter")
    if not re.search(r"[a-z]", password):
        problems.append("a lowercase letter")
    if not re.search(r"[0-9]", password):
        problems.append("a digit")
    if problems:
        raise ValueError("Password must contain " + ", ".join(problems))
    return password


EMAIL_MAX_LENGTH = 255


def _canonical_fits(email: str) -> str:
    # Folding can lengthen an address ("ß" -> "ss", "ﬃ" -> "ffi"); its
    # canonical form must fit the column too (else PostgreSQL refuses it: 500).
    if len(canonical_identity(email)) > EMAIL_MAX_LENGTH:
        raise ValueError(f"must be at most {EMAIL_MAX_LENGTH} characters once folded")
    return email


def refuse_unsafe_characters(value: object) -> object:
    """Refuse control and format characters (and line separators) in a name.

    Checked before whitespace is stripped, so a trailing newline is refused
    too: a name is one line of visible text, and one that could break lines
    could forge content in the emails that greet it.

    Raises:
        ValueError: Naming the first such character.
    """
    if isinstance(value, str) and (found := unsafe_characters(value)):
        raise ValueError(
            "must not contain control or format characters "
            f"(found U+{ord(found[0]):04X})"
        )
    return value


Password = Annotated[
    str,
    Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH),
    AfterValidator(check_password_strength),
]
# An email as email-validator normalises it (the domain by IDNA, the local
# part as typed); unique by its canonical form, not by this spelling.
NormalisedEmail = Annotated[
    EmailStr, Field(max_length=EMAIL_MAX_LENGTH), AfterValidator(_canonical_fits)
]
# ASCII only, so fullwidth letters are refused rather than silently mapped: a
# username is shown as typed (case kept) and unique by its folded form.
Username = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=50, pattern=_USERNAME_PATTERN
    ),
    BeforeValidator(refuse_unsafe_characters),
]
NAME_RULE = (
    "One line of visible text: no control or format characters (Unicode Cc, "
    "Cf) and no line or paragraph separators."
)
PersonName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    BeforeValidator(refuse_unsafe_characters),
    Field(description=NAME_RULE),
]
Phone = Annotated[
    str,
    # The pattern alone allows 21 characters with a leading "+"; the column holds 20.
    StringConstraints(strip_whitespace=True, max_length=20, pattern=_PHONE_PATTERN),
]
Age = Annotated[int, Field(ge=18, le=120)]


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(
            _contains_nul(key) or _contains_nul(item) for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return any(_contains_nul(item) for item in value)
    return False


def reject_nul(value: str) -> str:
    """Refuse NUL characters: PostgreSQL cannot store them and SQLite cuts at them.

    Raises:
        ValueError: The text contains a NUL character.
    """
    if "\x00" in value:
        raise ValueError("Text must not contain NUL characters")
    return value


# Free text from query strings (search prefixes, filters).
QueryText = Annotated[str, AfterValidator(reject_nul)]


def _storable_instant(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+14:00 is before year 1
        raise ValueError("date out of range") from exc


_RFC3339_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE
)


def _rfc3339_text(value: object) -> object:
    # Pydantic alone also takes "0.5" (Unix seconds), a date, or no seconds: the
    # document promises RFC 3339 `date-time`, so anything else is refused.
    if isinstance(value, str) and not _RFC3339_DATE_TIME.fullmatch(value):
        raise PydanticCustomError(
            "date_time_format",
            "Expected an RFC 3339 date-time with its zone, e.g. 2025-01-31T12:00:00Z",
        )
    return value


# A moment from a query string: an RFC 3339 date-time with its zone (a naive
# time means nothing to a service whose clients are anywhere), and one that
# exists in UTC.
QueryTime = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    AfterValidator(_storable_instant),
]


class StrictInput(BaseModel):
    """Input schemas refuse unknown fields, so no one can set `role` by adding it.

    They also refuse NUL characters anywhere in the body, which no column can
    hold faithfully.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul_characters(cls, data: Any) -> Any:
        if _contains_nul(data):
            raise ValueError("Text must not contain NUL characters")
        return data


def _refuse_null(value: object) -> object:
    if value is None:
        raise PydanticCustomError(
            "null_refused", "Field cannot be null; omit it to keep its value"
        )
    return value


def _document_without_null(schema: dict[str, Any]) -> None:
    # Pydantic documents `X | None = None` as "X or null, default null"; these
    # fields refuse null, so the document shows X alone (and not required).
    options = [option for option in schema.pop("anyOf") if option != {"type": "null"}]
    schema.pop("default", None)
    if len(options) == 1:
        schema.update(options[0])
    else:
        schema["anyOf"] = options


# A field of a partial update (PATCH) whose column is NOT NULL: it may be
# omitted (None then means "left as it is") but an explicit null is a 422 that
# names the field, and the OpenAPI document does not offer null.
Omittable = Annotated[
    T | None,
    BeforeValidator(_refuse_null),
    Field(json_schema_extra=_document_without_null),
]


class UserSignup(StrictInput):
    """Self-service signup."""

    email: NormalisedEmail
    username: Username
    password: Password
    confirm_password: str = Field(max_length=PASSWORD_MAX_LENGTH)
    first_name: PersonName
    last_name: PersonName
    desired_name: PersonName | None = None
    phone: Phone | None = None
    age: Age | None = None

    @model_validator(mode="after")
    def _passwords_consistent(self) -> Self:
        if self.password != self.confirm_password:
            raise ValueError("Passwords do not match")
        if self.email.casefold() in self.password.casefold():
            raise ValueError("Password must not contain the email address")
        return self


class UserPublic(BaseModel):
    """What the API shows of an account (never the password hash)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    username: str
    first_name: str
    last_name: str
    desired_name: str | None
    phone: str | None
    age: int | None
    role: str
    is_active: bool
    is_verified: bool
    created_at: datetime
    updated_at: datetime


class SuperuserCreate(StrictInput):
    """What `python -m app create-superuser` needs."""

    email: NormalisedEmail
    username: Username
    password: Password


class ProfileUpdate(StrictInput):
    """Fields a user may change on their own account; null clears an optional one."""

    first_name: Omittable[PersonName] = None
    last_name: Omittable[PersonName] = None
    desired_name: PersonName | None = None
    phone: Phone | None = None
    age: Age | None = None


class UserUpdate(ProfileUpdate):
    """`PATCH /users/{id}`: profile fields, plus status fields only admins may set."""

    role: Omittable[Role] = None
    is_active: Omittable[bool] = None
    is_verified: Omittable[bool] = None


PRIVILEGED_FIELDS = frozenset({"role", "is_active", "is_verified"})


class UserCreateByAdmin(StrictInput):
    """`POST /users`: an admin creates an account with a role."""

    email: NormalisedEmail
    username: Username
    password: Password
    first_name: PersonName
    last_name: PersonName
    desired_name: PersonName | None = None
    phone: Phone | None = None
    age: Age | None = None
    role: Role = Role.USER
    is_active: bool = True
    is_verified: bool = False


class PasswordChange(StrictInput):
    """`POST /users/me/password`."""

    current_password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)
    new_password: Password
    confirm_password: str = Field(max_length=PASSWORD_MAX_LENGTH)

    @model_validator(mode="after")
    def _confirmed(self) -> Self:
        if self.new_password != self.confirm_password:
            raise ValueError("Passwords do not match")
        return self


class UserFilters(BaseModel):
    """The filters of `GET /users`; None means "not filtered"."""

    role: Role | None = None
    is_active: bool | None = None
    search: str | None = None
