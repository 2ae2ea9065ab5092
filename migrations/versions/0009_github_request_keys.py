"""github: what a delivery asks for (a replay under a new delivery id starts nothing), progress comments indexed

Revision ID: 0009
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('github_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_key', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_github_deliveries_request_key'), ['request_key'], unique=True)
    with op.batch_alter_table('github_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_github_links_progress_comment_id'), ['progress_comment_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('github_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_github_links_progress_comment_id'))
    with op.batch_alter_table('github_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_github_deliveries_request_key'))
        batch_op.drop_column('request_key')
