"""users, tokens, attempts, follow-ups, patch formats

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('users',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('tokens',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tokens_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('patches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('diffstat', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('commit_message', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('mbox', sa.Text(), nullable=False, server_default=''))

    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('user_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('parent_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='task'))
        batch_op.add_column(sa.Column('attempt', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('worker', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sandbox_seconds', sa.Float(), nullable=False, server_default='0'))
        batch_op.create_index(batch_op.f('ix_tasks_user_id'), ['user_id'], unique=False)
        batch_op.create_unique_constraint('uq_tasks_user_idempotency_key', ['user_id', 'idempotency_key'])
        batch_op.create_foreign_key('fk_tasks_user_id_users', 'users', ['user_id'], ['id'], ondelete='SET NULL')




def downgrade() -> None:

    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_constraint('fk_tasks_user_id_users', type_='foreignkey')
        batch_op.drop_constraint('uq_tasks_user_idempotency_key', type_='unique')
        batch_op.drop_index(batch_op.f('ix_tasks_user_id'))
        batch_op.drop_column('sandbox_seconds')
        batch_op.drop_column('enqueued_at')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('worker')
        batch_op.drop_column('attempt')
        batch_op.drop_column('kind')
        batch_op.drop_column('parent_id')
        batch_op.drop_column('idempotency_key')
        batch_op.drop_column('user_id')

    with op.batch_alter_table('patches', schema=None) as batch_op:
        batch_op.drop_column('mbox')
        batch_op.drop_column('commit_message')
        batch_op.drop_column('diffstat')

    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tokens_user_id'))

    op.drop_table('tokens')
    op.drop_table('users')

