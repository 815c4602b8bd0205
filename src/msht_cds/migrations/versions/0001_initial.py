"""Initial schema: calls, issued_cards, feedback, referrals, jwt_replay.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("client", sa.String(255), nullable=True),
        sa.Column("hook", sa.String(100), nullable=False),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("hook_instance", sa.String(100), nullable=False),
        sa.Column("library_version", sa.String(100), nullable=False),
        sa.Column("patient_key", sa.String(64), nullable=True),
        sa.Column("encounter_key", sa.String(64), nullable=True),
        sa.Column("card_uuids", sa.JSON(), nullable=False),
        sa.Column("indicator_ids", sa.JSON(), nullable=False),
        sa.Column("concern", sa.String(50), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
    )
    op.create_index("ix_calls_at", "calls", ["at"])

    op.create_table(
        "issued_cards",
        sa.Column("uuid", sa.String(64), primary_key=True),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("hook_instance", sa.String(100), nullable=False),
        sa.Column("patient_key", sa.String(64), nullable=True),
        sa.Column("encounter_key", sa.String(64), nullable=True),
        sa.Column("indicator_ids", sa.JSON(), nullable=False),
        sa.Column("concern", sa.String(50), nullable=True),
        sa.Column("suggestion_uuids", sa.JSON(), nullable=False),
        sa.Column("issued_at", TS, nullable=False),
    )
    op.create_index("ix_issued_cards_patient_key", "issued_cards", ["patient_key"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(64), nullable=False, unique=True),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("patient_key", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
        sa.Column("override_code", sa.String(255), nullable=True),
        sa.Column("override_system", sa.String(255), nullable=True),
        sa.Column("outcome_timestamp", TS, nullable=False),
        sa.Column("user_comment_present", sa.Boolean(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])
    op.create_index("ix_feedback_patient_time", "feedback", ["patient_key", "outcome_timestamp"])

    op.create_table(
        "referrals",
        sa.Column("patient_key", sa.String(64), primary_key=True),
        sa.Column("encounter_key", sa.String(64), primary_key=True),
        sa.Column("at", TS, nullable=False),
    )

    op.create_table(
        "jwt_replay",
        sa.Column("claim_key", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_jwt_replay_expires_at", "jwt_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_table("jwt_replay")
    op.drop_table("referrals")
    op.drop_table("feedback")
    op.drop_table("issued_cards")
    op.drop_table("calls")
