"""best-of-N attempts: a task run N times as attempt tasks, ranked, the best one's patch the task's

Revision ID: 0012
Revises: 0011
"""

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('attempt_of', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('attempt_index', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('ranking', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_tasks_attempt_of'), ['attempt_of'], unique=False)
        batch_op.create_foreign_key(
            'fk_tasks_attempt_of_tasks', 'tasks', ['attempt_of'], ['id'], ondelete='CASCADE'
        )


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_constraint('fk_tasks_attempt_of_tasks', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_tasks_attempt_of'))
        batch_op.drop_column('ranking')
        batch_op.drop_column('attempt_index')
        batch_op.drop_column('attempt_of')
        batch_op.drop_column('attempts')
