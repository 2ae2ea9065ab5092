"""task images: images given with a task (uploads, fetched URLs, GitHub issue images), sent to the model

Revision ID: 0013
Revises: 0012
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'task_images',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('task_id', sa.String(length=32), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('url', sa.String(length=2048), nullable=True),
        sa.Column('media_type', sa.String(length=32), nullable=True),
        sa.Column('sha256', sa.String(length=64), nullable=True),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('task_id', 'position', name='uq_task_images_task_position'),
    )
    with op.batch_alter_table('task_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_images_task_id'), ['task_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('task_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_images_task_id'))
    op.drop_table('task_images')
