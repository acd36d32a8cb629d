"""How tickets get in: signed helpdesk webhooks (:mod:`producer.webhooks`), CSV / JSONL files
(:mod:`producer.importer`), deduplicated acceptance (:mod:`producer.intake`) and the guards
in front of it (:mod:`producer.guards`). Never imports :mod:`worker`."""
