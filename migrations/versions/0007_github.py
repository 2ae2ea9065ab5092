"""github deliveries, installations and task links

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'github_deliveries',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('event', sa.String(length=64), nullable=False),
        sa.Column('action', sa.String(length=64), nullable=True),
        sa.Column('outcome', sa.String(length=255), nullable=False),
        sa.Column('task_id', sa.String(length=32), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'github_installations',
        sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('account', sa.String(length=255), nullable=False),
        sa.Column('suspended', sa.Boolean(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'github_links',
        sa.Column('task_id', sa.String(length=32), nullable=False),
        sa.Column('repo', sa.String(length=255), nullable=False),
        sa.Column('installation_id', sa.BigInteger(), nullable=True),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(length=32), nullable=False),
        sa.Column('sender', sa.String(length=100), nullable=False),
        sa.Column('trigger_comment_id', sa.BigInteger(), nullable=True),
        sa.Column('progress_comment_id', sa.BigInteger(), nullable=True),
        sa.Column('branch', sa.String(length=255), nullable=False),
        sa.Column('base_branch', sa.String(length=255), nullable=False),
        sa.Column('pr_number', sa.Integer(), nullable=True),
        sa.Column('pr_url', sa.String(length=512), nullable=True),
        sa.Column('publish_state', sa.String(length=16), nullable=False),
        sa.Column('publish_error', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('task_id'),
    )
    op.create_index(op.f('ix_github_links_repo'), 'github_links', ['repo'], unique=False)
    op.create_index(op.f('ix_github_links_branch'), 'github_links', ['branch'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_github_links_branch'), table_name='github_links')
    op.drop_index(op.f('ix_github_links_repo'), table_name='github_links')
    op.drop_table('github_links')
    op.drop_table('github_installations')
    op.drop_table('github_deliveries')
