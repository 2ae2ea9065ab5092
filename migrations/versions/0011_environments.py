"""environments: per repository pattern, a set-up script, variables, sealed secrets and network policies

Revision ID: 0011
Revises: 0010
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'environments',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('pattern', sa.String(length=2048), nullable=False),
        sa.Column('setup_script', sa.Text(), nullable=True),
        sa.Column('variables', sa.JSON(), nullable=False),
        sa.Column('setup_network', sa.JSON(), nullable=False),
        sa.Column('agent_network', sa.JSON(), nullable=False),
        sa.Column('owners', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('pattern'),
    )
    op.create_table(
        'environment_secrets',
        sa.Column('environment_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('ciphertext', sa.Text(), nullable=False),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('environment_id', 'name'),
    )


def downgrade() -> None:
    op.drop_table('environment_secrets')
    op.drop_table('environments')
