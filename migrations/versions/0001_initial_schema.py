"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 02:50:54.267781
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('driver_tokens',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('id_token', sa.String(length=36), nullable=False),
    sa.Column('label', sa.String(length=80), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_driver_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_driver_tokens_token_hash'))
    )
    op.create_table('ev_needs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('evse_id', sa.Integer(), nullable=False),
    sa.Column('transaction_id', sa.String(length=36), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('departure_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('energy_kwh', sa.Float(), nullable=True),
    sa.Column('capacity_kwh', sa.Float(), nullable=True),
    sa.Column('soc', sa.Float(), nullable=True),
    sa.Column('target_soc', sa.Float(), nullable=True),
    sa.Column('min_soc', sa.Float(), nullable=True),
    sa.Column('ev_max_charge_kw', sa.Float(), nullable=True),
    sa.Column('ev_max_discharge_kw', sa.Float(), nullable=True),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ev_needs'))
    )
    op.create_index(op.f('ix_ev_needs_station_id_evse_id_received_at'), 'ev_needs', ['station_id', 'evse_id', 'received_at'], unique=False)
    op.create_table('grid_events',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('payment_per_kwh', sa.Float(), nullable=False),
    sa.Column('cap_kw', sa.Float(), nullable=True),
    sa.Column('source', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grid_events'))
    )
    op.create_table('id_tokens',
    sa.Column('id_token', sa.String(length=36), nullable=False),
    sa.Column('type', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id_token', name=op.f('pk_id_tokens'))
    )
    op.create_table('meter_values',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('evse_id', sa.Integer(), nullable=False),
    sa.Column('transaction_id', sa.String(length=36), nullable=True),
    sa.Column('measurand', sa.String(length=50), nullable=False),
    sa.Column('phase', sa.String(length=8), nullable=True),
    sa.Column('context', sa.String(length=24), nullable=True),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('unit', sa.String(length=20), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_meter_values'))
    )
    op.create_index(op.f('ix_meter_values_station_id_ts'), 'meter_values', ['station_id', 'ts'], unique=False)
    op.create_index(op.f('ix_meter_values_transaction_id_ts'), 'meter_values', ['transaction_id', 'ts'], unique=False)
    op.create_table('plans',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('trigger', sa.String(length=40), nullable=False),
    sa.Column('inputs_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=40), nullable=False),
    sa.Column('fallback', sa.Boolean(), nullable=False),
    sa.Column('objective', sa.Float(), nullable=True),
    sa.Column('terms', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('solve_s', sa.Float(), nullable=False),
    sa.Column('horizon_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('horizon_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sessions', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_plans'))
    )
    op.create_index(op.f('ix_plans_created_at'), 'plans', ['created_at'], unique=False)
    op.create_table('preferences',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('transaction_id', sa.String(length=36), nullable=False),
    sa.Column('departure_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('energy_kwh', sa.Float(), nullable=True),
    sa.Column('target_soc', sa.Float(), nullable=True),
    sa.Column('reserve_soc', sa.Float(), nullable=True),
    sa.Column('allow_discharge', sa.Boolean(), nullable=True),
    sa.Column('mode', sa.String(length=16), nullable=True),
    sa.Column('set_by', sa.String(length=80), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_preferences'))
    )
    op.create_index(op.f('ix_preferences_station_id_transaction_id_set_at'), 'preferences', ['station_id', 'transaction_id', 'set_at'], unique=False)
    op.create_table('security_events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('station_id', sa.String(length=48), nullable=True),
    sa.Column('kind', sa.String(length=50), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('remote_address', sa.String(length=64), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_security_events'))
    )
    op.create_index(op.f('ix_security_events_ts'), 'security_events', ['ts'], unique=False)
    op.create_table('site_settings',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=80), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_site_settings'))
    )
    op.create_table('station_messages',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_station_messages'))
    )
    op.create_index(op.f('ix_station_messages_station_id_action_received_at'), 'station_messages', ['station_id', 'action', 'received_at'], unique=False)
    op.create_table('stations',
    sa.Column('id', sa.String(length=48), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=True),
    sa.Column('security_profile', sa.Integer(), server_default='1', nullable=False),
    sa.Column('enabled', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('discharge_dialect', sa.String(length=32), server_default='negative_limit', nullable=False),
    sa.Column('vendor', sa.String(length=50), nullable=True),
    sa.Column('model', sa.String(length=50), nullable=True),
    sa.Column('serial_number', sa.String(length=25), nullable=True),
    sa.Column('firmware_version', sa.String(length=50), nullable=True),
    sa.Column('boot_reason', sa.String(length=32), nullable=True),
    sa.Column('boot_status', sa.String(length=16), server_default='Accepted', nullable=False),
    sa.Column('firmware_status', sa.String(length=40), nullable=True),
    sa.Column('registered_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_boot_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('connected', sa.Boolean(), server_default='false', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stations'))
    )
    op.create_table('status_history',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('evse_id', sa.Integer(), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_status_history'))
    )
    op.create_index(op.f('ix_status_history_station_id_ts'), 'status_history', ['station_id', 'ts'], unique=False)
    op.create_table('tariffs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=40), nullable=False),
    sa.Column('demand_charge_per_kw', sa.Float(), nullable=False),
    sa.Column('periods', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tariffs'))
    )
    op.create_table('transaction_events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('transaction_id', sa.String(length=36), nullable=False),
    sa.Column('seq_no', sa.Integer(), nullable=False),
    sa.Column('event_type', sa.String(length=10), nullable=False),
    sa.Column('trigger_reason', sa.String(length=40), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('offline', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('response', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transaction_events')),
    sa.UniqueConstraint('station_id', 'transaction_id', 'seq_no', name=op.f('uq_transaction_events_station_id_transaction_id_seq_no'))
    )
    op.create_table('transaction_seq_gaps',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('transaction_id', sa.String(length=36), nullable=False),
    sa.Column('seq_no', sa.Integer(), nullable=False),
    sa.Column('detected_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transaction_seq_gaps')),
    sa.UniqueConstraint('station_id', 'transaction_id', 'seq_no', name=op.f('uq_transaction_seq_gaps_station_id_transaction_id_seq_no'))
    )
    op.create_table('evses',
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('evse_id', sa.Integer(), nullable=False),
    sa.Column('max_charge_kw', sa.Float(), server_default='11', nullable=False),
    sa.Column('max_discharge_kw', sa.Float(), server_default='0', nullable=False),
    sa.Column('phases', sa.Integer(), server_default='3', nullable=False),
    sa.Column('bidirectional', sa.Boolean(), server_default='false', nullable=False),
    sa.ForeignKeyConstraint(['station_id'], ['stations.id'], name=op.f('fk_evses_station_id_stations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('station_id', 'evse_id', name=op.f('pk_evses'))
    )
    op.create_table('profiles_sent',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('plan_id', sa.BigInteger(), nullable=True),
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('evse_id', sa.Integer(), nullable=False),
    sa.Column('transaction_id', sa.String(length=36), nullable=True),
    sa.Column('profile_id', sa.Integer(), nullable=False),
    sa.Column('stack_level', sa.Integer(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('status', sa.String(length=40), nullable=False),
    sa.Column('response', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['plan_id'], ['plans.id'], name=op.f('fk_profiles_sent_plan_id_plans'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_profiles_sent'))
    )
    op.create_index(op.f('ix_profiles_sent_station_id_sent_at'), 'profiles_sent', ['station_id', 'sent_at'], unique=False)
    op.create_index(op.f('ix_profiles_sent_transaction_id'), 'profiles_sent', ['transaction_id'], unique=False)
    op.create_table('transactions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('transaction_id', sa.String(length=36), nullable=False),
    sa.Column('evse_id', sa.Integer(), nullable=True),
    sa.Column('connector_id', sa.Integer(), nullable=True),
    sa.Column('id_token', sa.String(length=36), nullable=True),
    sa.Column('id_token_type', sa.String(length=20), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stopped_reason', sa.String(length=32), nullable=True),
    sa.Column('charging_state', sa.String(length=20), nullable=True),
    sa.Column('meter_start_import_wh', sa.Float(), nullable=True),
    sa.Column('meter_start_export_wh', sa.Float(), nullable=True),
    sa.Column('energy_in_kwh', sa.Float(), server_default='0', nullable=False),
    sa.Column('energy_out_kwh', sa.Float(), server_default='0', nullable=False),
    sa.Column('last_power_kw', sa.Float(), nullable=True),
    sa.Column('last_soc', sa.Float(), nullable=True),
    sa.Column('max_seq_no', sa.Integer(), server_default='-1', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['station_id'], ['stations.id'], name=op.f('fk_transactions_station_id_stations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transactions')),
    sa.UniqueConstraint('station_id', 'transaction_id', name=op.f('uq_transactions_station_id_transaction_id'))
    )
    op.create_index(op.f('ix_transactions_ended_at'), 'transactions', ['ended_at'], unique=False)
    op.create_index(op.f('ix_transactions_id_token'), 'transactions', ['id_token'], unique=False)
    op.create_table('connectors',
    sa.Column('station_id', sa.String(length=48), nullable=False),
    sa.Column('evse_id', sa.Integer(), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('status_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['station_id', 'evse_id'], ['evses.station_id', 'evses.evse_id'], name=op.f('fk_connectors_station_id_evses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('station_id', 'evse_id', 'connector_id', name=op.f('pk_connectors'))
    )


def downgrade() -> None:
    op.drop_table('connectors')
    op.drop_index(op.f('ix_transactions_id_token'), table_name='transactions')
    op.drop_index(op.f('ix_transactions_ended_at'), table_name='transactions')
    op.drop_table('transactions')
    op.drop_index(op.f('ix_profiles_sent_transaction_id'), table_name='profiles_sent')
    op.drop_index(op.f('ix_profiles_sent_station_id_sent_at'), table_name='profiles_sent')
    op.drop_table('profiles_sent')
    op.drop_table('evses')
    op.drop_table('transaction_seq_gaps')
    op.drop_table('transaction_events')
    op.drop_table('tariffs')
    op.drop_index(op.f('ix_status_history_station_id_ts'), table_name='status_history')
    op.drop_table('status_history')
    op.drop_table('stations')
    op.drop_index(op.f('ix_station_messages_station_id_action_received_at'), table_name='station_messages')
    op.drop_table('station_messages')
    op.drop_table('site_settings')
    op.drop_index(op.f('ix_security_events_ts'), table_name='security_events')
    op.drop_table('security_events')
    op.drop_index(op.f('ix_preferences_station_id_transaction_id_set_at'), table_name='preferences')
    op.drop_table('preferences')
    op.drop_index(op.f('ix_plans_created_at'), table_name='plans')
    op.drop_table('plans')
    op.drop_index(op.f('ix_meter_values_transaction_id_ts'), table_name='meter_values')
    op.drop_index(op.f('ix_meter_values_station_id_ts'), table_name='meter_values')
    op.drop_table('meter_values')
    op.drop_table('id_tokens')
    op.drop_table('grid_events')
    op.drop_index(op.f('ix_ev_needs_station_id_evse_id_received_at'), table_name='ev_needs')
    op.drop_table('ev_needs')
    op.drop_table('driver_tokens')
