"""account scopes for sessions made before they existed

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

Self-service (profile, password, sessions) used to need no scope: every token
could do it. It now needs `account:read` / `account:write`, and a refresh
re-grants the scopes its session stored at login. Sessions opened before this
revision get both account scopes, so their refreshed tokens keep exactly the
rights they had; only new logins can ask for less.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNT_SCOPES = "account:read account:write"


def upgrade() -> None:
    # Prepended: the stored string stays sorted, as format_scope writes it.
    op.execute(
        f"UPDATE auth_sessions SET scope = '{ACCOUNT_SCOPES} ' || scope "  # noqa: S608
        "WHERE scope NOT LIKE '%account:%'"
    )


def downgrade() -> None:
    op.execute(
        f"UPDATE auth_sessions SET scope = REPLACE(scope, '{ACCOUNT_SCOPES} ', '')"  # noqa: S608
    )
