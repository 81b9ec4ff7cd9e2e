"""The audit trail: who changed what, through the API or a deploy hook (recording, reading, retention)."""
