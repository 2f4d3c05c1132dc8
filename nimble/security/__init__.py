"""Access control: API keys with scopes and limits, the audit log."""
