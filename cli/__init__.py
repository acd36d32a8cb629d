"""The `triage` command (click): one module per command or group, loaded when it is run."""
