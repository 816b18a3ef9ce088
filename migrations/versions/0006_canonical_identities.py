"""canonical identities: email and username unique by NFKC + casefold

Until now email and username were stored lower-cased and unique as stored, so
`cux@example.com` and its fullwidth spelling were two accounts. This adds
`email_canonical` and `username_canonical` (unique, NOT NULL), fills them from
the existing rows, and moves uniqueness to them: `uq_users_email` and
`uq_users_username` go, and so does `ix_users_email_is_active` (login looks
accounts up by the canonical columns' unique indexes now).

If existing rows share a canonical form, nothing is changed and the upgrade
stops with a list of the colliding accounts: those need a person to decide
which one stays (merge, rename or delete), then the upgrade is run again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.text import IdentityCollisionError, canonical_identity

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_USERS = sa.table(
    "users",
    sa.column("id", sa.Integer),
    sa.column("email", sa.String),
    sa.column("username", sa.String),
    sa.column("email_canonical", sa.String),
    sa.column("username_canonical", sa.String),
)


def _collisions(rows: Sequence[sa.Row[tuple[int, str, str]]]) -> list[str]:
    lines = []
    for column in ("email", "username"):
        groups: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            value = getattr(row, column)
            groups[canonical_identity(value)].append(f"id {row.id} ({value!r})")
        lines += [
            f"  {column} {canonical!r}: " + ", ".join(accounts)
            for canonical, accounts in groups.items()
            if len(accounts) > 1
        ]
    return lines


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_USERS.c.id, _USERS.c.email, _USERS.c.username).order_by(
            _USERS.c.id
        )
    ).all()
    # Checked before any change, so a refused upgrade leaves the schema as it
    # was on SQLite too (whose DDL the batch mode does not roll back).
    collisions = _collisions(rows)
    if collisions:
        raise IdentityCollisionError(
            "Migration 0006 stopped: these accounts are one identity once "
            "emails and usernames are compared by NFKC + case folding. Merge, "
            "rename or delete all but one of each group, then migrate again "
            "(nothing was changed):\n" + "\n".join(collisions)
        )
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("email_canonical", sa.String(255)))
        batch_op.add_column(sa.Column("username_canonical", sa.String(50)))
    if rows:
        connection.execute(
            _USERS.update()
            .where(_USERS.c.id == sa.bindparam("row_id"))
            .values(
                email_canonical=sa.bindparam("email_value"),
                username_canonical=sa.bindparam("username_value"),
            ),
            [
                {
                    "row_id": row.id,
                    "email_value": canonical_identity(row.email),
                    "username_value": canonical_identity(row.username),
                }
                for row in rows
            ],
        )
    with op.batch_alter_table("users") as batch_op:
        batch_op.alter_column(
            "email_canonical", existing_type=sa.String(255), nullable=False
        )
        batch_op.alter_column(
            "username_canonical", existing_type=sa.String(50), nullable=False
        )
        batch_op.create_unique_constraint(
            op.f("uq_users_email_canonical"), ["email_canonical"]
        )
        batch_op.create_unique_constraint(
            op.f("uq_users_username_canonical"), ["username_canonical"]
        )
        batch_op.drop_constraint("uq_users_email", type_="unique")
        batch_op.drop_constraint("uq_users_username", type_="unique")
        batch_op.drop_index("ix_users_email_is_active")


def downgrade() -> None:
    # The code before 0006 stored and looked up lower-cased values.
    op.execute(
        _USERS.update().values(
            email=sa.func.lower(_USERS.c.email),
            username=sa.func.lower(_USERS.c.username),
        )
    )
    with op.batch_alter_table("users") as batch_op:
        batch_op.create_index("ix_users_email_is_active", ["email", "is_active"])
        batch_op.create_unique_constraint("uq_users_username", ["username"])
        batch_op.create_unique_constraint("uq_users_email", ["email"])
        batch_op.drop_constraint("uq_users_username_canonical", type_="unique")
        batch_op.drop_constraint("uq_users_email_canonical", type_="unique")
        batch_op.drop_column("username_canonical")
        batch_op.drop_column("email_canonical")
