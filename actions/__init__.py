"""Actions: what a decision causes outside the product, delivered through the outbox.

- :mod:`actions.outbox`: which actions a decision gets (one per configured target), staged
  in the decision's own transaction and published once it commits.
- :mod:`actions.webhook`: the signed outbound webhook (Standard Webhooks).
- :mod:`actions.delivery`: one attempt of one action, its outcome and its next try.
- :mod:`actions.sweeper`: the periodic re-publish of what is due.

A new kind of action (a helpdesk's tag or note) is a new ``kind`` of outbox row with its
own sender in :mod:`actions.delivery`; staging, retries, the sweeper, `triage actions` and
the metrics are shared.
"""
