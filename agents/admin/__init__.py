"""The admin API: Conductor's event-handler resource and Orkes' access control, served by every
worker (agents.admin.api), its state in Kafka (agents.admin.store), its tokens signed JWTs
(agents.admin.tokens), every change an audit record (agents.admin.changes)."""
