"""Settings, errors, lifecycle and the default-model hook."""
